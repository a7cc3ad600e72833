"""A Hydra SearchPathPlugin: every Hydra application in an environment where lora-train is installed can compose
lora-train's config groups (`model/gptj_6b`, `quant/nf4`, `lora/gpt4all_j`, `data/...`, `train/...`) from its own
defaults list, and hand the result to lora_train's functions:

    # my_app/conf/config.yaml
    defaults:
      - model: gptj_6b
      - quant: nf4
      - lora: gpt4all_j
      - _self_

Hydra finds this class by scanning the `hydra_plugins` namespace package; nothing needs registering.
The path is appended, so an application's own config groups of the same name take precedence.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class LoraTrainSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="lora-train", path="pkg://lora_train.conf")

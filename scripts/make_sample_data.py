"""Generate the bundled sample dataset ``lora_train/data/files/sample.jsonl``.

Each line is a JSON object with the keys ``prompt``, ``response`` and ``source``
(the GPT4All-J schema). Most rows are hand-written; arithmetic and unit
conversion rows are generated from templates with a fixed seed, and their
answers are computed here so they are correct. A few low-quality rows are
planted on purpose (boilerplate AI disclaimers, refusals, exact and near
duplicates, empty responses, a one-character prompt) so that the curation
filters have something to remove. The output is fully deterministic.

Usage: python scripts/make_sample_data.py
"""
import json
import random
import re
from pathlib import Path

SEED = 20240601
OUT = Path(__file__).resolve().parents[1] / "lora_train" / "data" / "files" / "sample.jsonl"

HAND = [
    # --- general knowledge ---
    ("qa", "What is the capital of Australia?", "The capital of Australia is Canberra, not Sydney as many people assume."),
    ("qa", "Which planet is known as the Red Planet?", "Mars. Iron oxide dust on its surface gives it a reddish color."),
    ("qa", "Who wrote Pride and Prejudice?", "Jane Austen wrote Pride and Prejudice, first published in 1813."),
    ("qa", "What is the chemical symbol for gold?", "Au, from the Latin word aurum."),
    ("qa", "How many continents are there?", "By the most common convention there are seven: Africa, Antarctica, Asia, Australia (Oceania), Europe, North America and South America."),
    ("qa", "What is the largest ocean on Earth?", "The Pacific Ocean, which covers roughly a third of the planet's surface."),
    ("qa", "What gas do plants take in for photosynthesis?", "Carbon dioxide. Plants combine it with water, using energy from light, to make sugar and release oxygen."),
    ("qa", "At what temperature does water boil at sea level?", "100 °C, which is 212 °F."),
    ("qa", "Who painted the Mona Lisa?", "Leonardo da Vinci, in the early 1500s."),
    ("qa", "What is the longest river in South America?", "The Amazon River."),
    ("qa", "How many sides does a hexagon have?", "Six."),
    ("qa", "What is the smallest prime number?", "2. It is also the only even prime number."),
    ("qa", "When did humans first land on the Moon?", "On July 20, 1969, during NASA's Apollo 11 mission."),
    ("qa", "What is the hardest natural material?", "Diamond."),
    ("qa", "Which language has the most native speakers?", "Mandarin Chinese."),
    ("qa", "What is the freezing point of water in Fahrenheit?", "32 °F."),
    ("qa", "What does DNA stand for?", "Deoxyribonucleic acid."),
    ("qa", "How fast does light travel in a vacuum?", "About 299,792 kilometers per second, or roughly 186,000 miles per second."),
    ("qa", "Which organ pumps blood around the body?", "The heart."),
    ("qa", "What is the capital of Canada?", "Ottawa."),
    ("qa", "Who developed the theory of general relativity?", "Albert Einstein, who published it in 1915."),
    ("qa", "What is the largest planet in our solar system?", "Jupiter."),
    ("qa", "How many bones does an adult human have?", "Typically 206."),
    ("qa", "What is the main ingredient in guacamole?", "Avocado."),
    ("qa", "What is the currency of Japan?", "The Japanese yen."),
    ("qa", "What is the tallest mountain above sea level?", "Mount Everest, at about 8,849 meters (29,032 feet)."),
    ("qa", "What does CPU stand for?", "Central processing unit."),
    ("qa", "Which element has the atomic number 1?", "Hydrogen."),
    ("qa", "What is the capital of Kenya?", "Nairobi."),
    ("qa", "Who wrote the novel 1984?", "George Orwell. It was published in 1949."),
    ("qa", "What is the capital of Brazil?", "Brasília."),
    ("qa", "What is the largest desert in the world?", "Antarctica, if cold deserts count. The largest hot desert is the Sahara."),
    ("qa", "Which blood type is known as the universal donor?", "O negative, for red blood cell transfusions."),
    ("qa", "How many players does a soccer team have on the field?", "Eleven, including the goalkeeper."),
    ("arithmetic", "How many minutes are in a day?", "1,440 minutes, because 24 × 60 = 1,440."),
    ("arithmetic", "What is the square root of 144?", "12, because 12 × 12 = 144."),
    # --- definitions ---
    ("qa", "Define the word algorithm.", "An algorithm is a finite sequence of well-defined steps for solving a problem or performing a task, like a recipe for sorting a list."),
    ("qa", "What is an API?", "An API (application programming interface) is a defined set of rules that lets one piece of software request data or services from another."),
    ("qa", "What does ephemeral mean?", "Ephemeral means lasting for a very short time, like a soap bubble."),
    ("qa", "What is inflation in economics?", "Inflation is the general rise in prices over time, which means each unit of money buys less than it did before."),
    ("qa", "What is a haiku?", "A haiku is a short Japanese poetic form, usually written in English as three lines of five, seven and five syllables, often about nature or a single moment."),
    ("qa", "What is machine learning?", "Machine learning is a branch of computer science in which programs learn patterns from data to make predictions or decisions, instead of following only hand-written rules."),
    ("qa", "What is a prime number?", "A whole number greater than 1 whose only divisors are 1 and itself, such as 2, 3, 5, 7 and 11."),
    ("qa", "What is an ecosystem?", "An ecosystem is a community of living things interacting with each other and with their physical environment, such as a pond, a forest or a coral reef."),
    ("qa", "What is the difference between weather and climate?", "Weather is the short-term state of the atmosphere, like today's rain. Climate is the average pattern of weather in a region over many years."),
    ("qa", "What is a metaphor?", 'A metaphor is a figure of speech that describes something by saying it is something else, as in "time is a thief."'),
    ("qa", "What is a noun?", "A noun is a word that names a person, place, thing or idea, such as teacher, Paris, chair or freedom."),
    ("qa", "What is gradient descent?", "Gradient descent is an optimization method that repeatedly adjusts parameters in the direction that most reduces a loss function, taking small steps whose size is set by a learning rate."),
    ("qa", "What is overfitting in machine learning?", "Overfitting happens when a model learns the training data too closely, including its noise, so it does well on that data but poorly on new examples."),
    ("qa", "What is JSON?", "JSON (JavaScript Object Notation) is a lightweight text format for storing and exchanging data as key-value objects and arrays."),
    ("qa", "What is HTTP?", "HTTP (Hypertext Transfer Protocol) is the protocol that web browsers and servers use to request and send web pages and other resources."),
    ("qa", "What does latency mean in networking?", "Latency is the delay between sending a request and the data arriving, usually measured in milliseconds."),
    ("qa", "What is a leap year?", "A year with 366 days, adding February 29. Years divisible by 4 are leap years, except century years, which must also be divisible by 400; so 2000 was a leap year but 1900 was not."),
    ("qa", "What is the Pythagorean theorem?", "In a right triangle, the square of the hypotenuse equals the sum of the squares of the other two sides: a² + b² = c²."),
    ("qa", "What is fine-tuning a language model?", "Fine-tuning is further training of a pretrained model on a smaller, task-specific dataset so that it adapts to a particular style or task."),
    ("qa", "What is LoRA in machine learning?", "LoRA (low-rank adaptation) is a fine-tuning method that freezes the original weights and trains small low-rank matrices added to selected layers, which greatly reduces the number of trainable parameters."),
    ("qa", "What is an idiom?", 'An idiom is a phrase whose meaning differs from the literal meaning of its words, such as "break the ice," which means to ease tension when people first meet.'),
    ("qa", "What is a tokenizer?", "A tokenizer splits text into smaller units called tokens, such as words or pieces of words, and maps them to numbers that a model can process."),
    # --- lists ---
    ("qa", "List five fruits that are high in vitamin C.", "1. Oranges\n2. Kiwifruit\n3. Strawberries\n4. Guavas\n5. Papayas"),
    ("qa", "Name the three primary colors of light.", "Red, green and blue."),
    ("qa", "List three renewable sources of energy.", "Solar power, wind power and hydroelectric power."),
    ("qa", "List the planets of the solar system in order from the Sun.", "Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus, Neptune."),
    ("qa", "List the days of the week in Spanish.", "Lunes, martes, miércoles, jueves, viernes, sábado y domingo."),
    ("qa", "Name four string instruments.", "Violin, cello, guitar and harp."),
    ("qa", "List the noble gases.", "Helium, neon, argon, krypton, xenon and radon; the synthetic element oganesson is also placed in the group."),
    ("qa", "List three common data structures in computer science.", "Arrays, linked lists and hash tables. Trees and graphs are also very common."),
    # --- code ---
    ("code", "Write a Python function that reverses a string.", "Use slicing with a step of -1:\n\ndef reverse_string(s):\n    return s[::-1]\n\nprint(reverse_string('hello'))  # olleh"),
    ("code", "Write a Python function that checks whether a number is prime.", "def is_prime(n):\n    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n        if n % i == 0:\n            return False\n        i += 1\n    return True\n\nIt only tests divisors up to the square root of n, which keeps it fast for moderate inputs."),
    ("code", "Write a JavaScript function that returns the sum of an array of numbers.", "const sum = (numbers) => numbers.reduce((total, n) => total + n, 0);\n\nconsole.log(sum([1, 2, 3, 4])); // 10"),
    ("code", "Write a SQL query that returns the five customers with the highest total order amount.", "SELECT customer_id, SUM(amount) AS total_spent\nFROM orders\nGROUP BY customer_id\nORDER BY total_spent DESC\nLIMIT 5;"),
    ("code", "How do I count the lines in all .py files in a directory with bash?", "find . -name '*.py' -print0 | xargs -0 wc -l\n\nThe last line of the output shows the total. Using -print0 with -0 keeps file names that contain spaces intact."),
    ("code", "How do I read a JSON file in Python?", "import json\n\nwith open('data.json', encoding='utf-8') as f:\n    data = json.load(f)\n\nprint(data)\n\njson.load parses the file into dictionaries and lists."),
    ("code", "Write a Python list comprehension that gives the squares of the even numbers from 1 to 20.", "squares = [n * n for n in range(1, 21) if n % 2 == 0]\n# [4, 16, 36, 64, 100, 144, 196, 256, 324, 400]"),
    ("code", "Write a JavaScript arrow function that capitalizes the first letter of a string.", "const capitalize = (s) => s.charAt(0).toUpperCase() + s.slice(1);\n\ncapitalize('world'); // 'World'"),
    ("code", "Write a SQL statement that creates a users table with an id, an email and a creation date.", "CREATE TABLE users (\n    id INTEGER PRIMARY KEY,\n    email TEXT NOT NULL UNIQUE,\n    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP\n);"),
    ("code", "How can I find files larger than 100 MB with bash?", "find . -type f -size +100M -exec ls -lh {} +\n\nThis searches the current folder and its subfolders and lists each large file with a readable size."),
    ("code", "Write a Python generator that yields Fibonacci numbers.", "def fibonacci():\n    a, b = 0, 1\n    while True:\n        yield a\n        a, b = b, a + b\n\nfrom itertools import islice\nprint(list(islice(fibonacci(), 8)))  # [0, 1, 1, 2, 3, 5, 8, 13]"),
    ("code", "How do I merge two dictionaries in Python 3.9 or newer?", "Use the | operator:\n\nmerged = defaults | overrides\n\nKeys from the right-hand dictionary win when both contain the same key. On older versions, use {**defaults, **overrides}."),
    ("code", "Count how often each word appears in a string using Python.", "from collections import Counter\n\ntext = 'the cat and the hat'\ncounts = Counter(text.split())\nprint(counts.most_common(2))  # [('the', 2), ('cat', 1)]"),
    ("code", "Write JavaScript code that keeps only the even numbers from an array.", "const evens = [1, 2, 3, 4, 5, 6].filter((n) => n % 2 === 0);\n// [2, 4, 6]"),
    ("code", "Write a SQL query that counts the products in each category.", "SELECT category, COUNT(*) AS product_count\nFROM products\nGROUP BY category\nORDER BY product_count DESC;"),
    ("code", "Write a bash loop that renames every .txt file in the current folder to .md.", 'for f in *.txt; do\n    mv -- "$f" "${f%.txt}.md"\ndone'),
    ("code", "In Python, what does len([1, 2, 3]) return?", "It returns 3, the number of items in the list."),
    ("code", "What is the difference between a list and a tuple in Python?", "A list is mutable, so you can add, remove or change items after creating it. A tuple is immutable, which makes it hashable when its items are hashable, so it can be used as a dictionary key."),
    ("code", "How do I read a text file line by line in Python?", "with open('notes.txt', encoding='utf-8') as f:\n    for line in f:\n        print(line.rstrip('\\n'))\n\nIterating over the file object reads one line at a time, so large files do not have to fit in memory."),
    ("code", "Write an async JavaScript function that fetches JSON from a URL.", "async function getJson(url) {\n  const response = await fetch(url);\n  if (!response.ok) {\n    throw new Error(`Request failed: ${response.status}`);\n  }\n  return response.json();\n}"),
    ("code", "Write a PostgreSQL query that deletes log rows older than 30 days.", "DELETE FROM logs\nWHERE created_at < NOW() - INTERVAL '30 days';"),
    ("code", "Show the disk usage of each item in the current directory, largest first, in bash.", "du -sh -- * | sort -rh\n\ndu -sh prints a human-readable size for each item, and sort -rh orders those sizes from largest to smallest."),
    ("code", "Flatten a list of lists in Python.", "nested = [[1, 2], [3], [4, 5]]\nflat = [x for sub in nested for x in sub]\n# [1, 2, 3, 4, 5]"),
    ("code", "Write FizzBuzz in Python for the numbers 1 to 15.", "for i in range(1, 16):\n    if i % 15 == 0:\n        print('FizzBuzz')\n    elif i % 3 == 0:\n        print('Fizz')\n    elif i % 5 == 0:\n        print('Buzz')\n    else:\n        print(i)"),
    ("code", "Why does this Python code fail? for i in range(10) print(i)", "The for statement is missing a colon, and the body belongs on its own indented line:\n\nfor i in range(10):\n    print(i)"),
    ("code", "What is the difference between == and === in JavaScript?", "== compares values after type coercion, so '5' == 5 is true. === compares value and type without coercion, so '5' === 5 is false. Prefer === in most code."),
    ("code", "Write a SQL query that lists each order with its customer's name.", "SELECT o.id, o.order_date, c.name\nFROM orders AS o\nJOIN customers AS c ON c.id = o.customer_id;"),
    ("code", "How do I check in bash whether a file exists?", 'if [ -f "config.yaml" ]; then\n    echo "found"\nelse\n    echo "missing"\nfi\n\n-f is true for regular files; use -e to accept any kind of path.'),
    ("code", "Sort a list of dictionaries by the 'age' key in Python.", "people = [{'name': 'Ana', 'age': 31}, {'name': 'Ben', 'age': 25}]\npeople.sort(key=lambda p: p['age'])\n# Ben (25) now comes before Ana (31)"),
    ("code", "Write rows to a CSV file in Python.", "import csv\n\nrows = [['name', 'score'], ['Ana', 90], ['Ben', 85]]\nwith open('scores.csv', 'w', newline='', encoding='utf-8') as f:\n    csv.writer(f).writerows(rows)"),
    ("code", "Remove duplicates from a Python list while keeping the original order.", "items = [3, 1, 3, 2, 1]\nunique = list(dict.fromkeys(items))\n# [3, 1, 2]\n\nDictionaries keep insertion order, so the first occurrence of each item wins."),
    ("code", "How do I compress a folder into a .tar.gz archive from the command line?", "tar -czf backup.tar.gz my_folder/\n\n-c creates an archive, -z compresses it with gzip and -f names the output file. Extract it again with tar -xzf backup.tar.gz."),
    ("code", "Write a Python function that returns the largest number in a list without using max().", "def largest(numbers):\n    best = numbers[0]\n    for n in numbers[1:]:\n        if n > best:\n            best = n\n    return best"),
    ("code", "What does the SQL keyword DISTINCT do?", "DISTINCT removes duplicate rows from a query result. For example, SELECT DISTINCT city FROM customers; returns each city only once."),
    # --- poetry ---
    ("poetry", "Write a haiku about autumn leaves.", "Red leaves let go slow\nthe wind collects them in piles\nthe maple stands bare"),
    ("poetry", "Write a haiku about rain on a window.", "Soft taps on the glass\nsmall rivers race down the pane\nthe street blurs to gray"),
    ("poetry", "Write a haiku about the ocean at night.", "Black waves fold and hush\nthe moon spills a silver road\nthat no boat can take"),
    ("poetry", "Write a haiku about morning coffee.", "Steam curls from the cup\nthe first sip wakes up my hands\nthen the rest of me"),
    ("poetry", "Write a haiku about a sleeping cat.", "Curled in a sun patch\none ear twitches at a dream\nthe day waits for her"),
    ("poetry", "Write a haiku about a winter morning.", "Frost on every roof\nbreath hangs white above the path\nboots crunch the quiet"),
    ("poetry", "Write a haiku about waiting for code to compile.", "Progress bar crawls on\nI refill my tea and wait\nzero errors. Joy."),
    ("poetry", "Write a haiku about a mountain.", "Stone shoulders in cloud\nsnow lingers into June there\nthe valley looks up"),
    ("poetry", "Write a haiku about a garden in summer.", "Bees drift bloom to bloom\ntomatoes blush on the vine\nthe hose hisses cool"),
    ("poetry", "Write a four-line poem about the moon.", "The moon climbs up without a sound,\nit pours its light on sleeping ground,\nit keeps the tides, it keeps the time,\nand never asks for more than rhyme."),
    ("poetry", "Write a short poem about friendship.", "A friend is a lamp in a window,\nleft on when the road runs late;\nnot asking where you wandered,\njust glad you reached the gate."),
    ("poetry", "Write a limerick about a programmer.", "A coder who worked through the night\nkept chasing a bug out of sight.\nShe fixed it at four,\nthen found seven more,\nand decided to sleep till it's light."),
    ("poetry", "Write a rhyming couplet about spring.", "The thaw unlocks the river's song,\nand green returns where it belongs."),
    ("poetry", "Write a short poem about a city at night.", "Neon hums along the street,\ntaxis hiss on rain-slick stone,\na thousand windows, each a life,\nand no one quite alone."),
    ("poetry", "Write a two-line poem about the sea for a greeting card.", "May every tide bring something kind,\nand every wave leave care behind."),
    ("poetry", "Write a short poem about learning something new.", "At first the page is only noise,\na tangle, dense and wild;\nthen one line opens like a door,\nand I grin like a child."),
    # --- writing: rewriting, grammar, summaries ---
    ("writing", "Rewrite this to sound more formal: Hey, can you send me the report by tomorrow?", "Could you please send me the report by tomorrow? Thank you in advance."),
    ("writing", "Make this sentence formal: We gotta fix the server before the boss finds out.", "We need to repair the server promptly, before management becomes aware of the issue."),
    ("writing", "Rewrite in a formal tone: Thanks a ton for helping out with the move last weekend!", "Thank you very much for your assistance with the move last weekend. It was greatly appreciated."),
    ("writing", "Make this formal: The meeting got pushed to Friday cause half the team is out.", "The meeting has been rescheduled to Friday because several team members are unavailable."),
    ("writing", "Rewrite this complaint politely: Your app keeps crashing and it's driving me nuts.", "I have noticed that the app crashes frequently, which has been quite frustrating. Could you please look into the issue?"),
    ("writing", "Fix the grammar: She don't like going to the gym on mondays.", "She doesn't like going to the gym on Mondays."),
    ("writing", "Correct this sentence: Their going to the park after they finishes lunch.", "They're going to the park after they finish lunch."),
    ("writing", "Fix the grammar: Me and him was late because the bus broke down.", "He and I were late because the bus broke down."),
    ("writing", "Correct the spelling: I recieved the package yesturday and it was definately worth the wait.", "I received the package yesterday, and it was definitely worth the wait."),
    ("writing", "Fix the grammar: Each of the students have their own locker.", "Each of the students has their own locker."),
    ("writing", "Correct this sentence: The data shows that less people are driving to work.", "The data shows that fewer people are driving to work."),
    ("writing", "Rewrite in the active voice: The cake was eaten by the children.", "The children ate the cake."),
    ("writing", "Rewrite in the active voice: Mistakes were made by the planning committee.", "The planning committee made mistakes."),
    ("writing", "Make this more concise: In order to be able to finish the project on time, we need to start working on it as soon as possible.", "To finish the project on time, we need to start now."),
    ("writing", "Simplify this sentence: Due to the fact that it was raining, the event was postponed until a later date.", "Because it rained, the event was postponed."),
    ("writing", "Summarize in one sentence: The city council voted on Tuesday to extend library hours on weekends. The change, which starts next month, was requested by students who need quiet places to study. It will be funded by a small increase in parking fees.", "The city council approved longer weekend library hours, requested by students and paid for with slightly higher parking fees, starting next month."),
    ("writing", "Summarize: Maria tried three recipes for sourdough before one finally worked. The first was too dense, the second too sour. The third used a longer, cooler rise, and the loaf came out light with a crisp crust.", "After two failed attempts, Maria baked a light, crusty sourdough by using a longer, cooler rise."),
    ("writing", "Give a one-line summary: The update fixes a bug that caused the app to log users out after ten minutes, improves load times on older phones, and adds a dark mode option in settings.", "The update fixes an automatic logout bug, speeds up loading on older phones and adds dark mode."),
    ("writing", "Summarize the following paragraph in two or three sentences:\n\n"
     "When the old parking lot behind the Elm Street library was closed three years ago, most residents expected it to sit empty until a developer bought it. Instead, a group of neighbors asked the city for permission to turn it into a community garden. They broke up the asphalt with borrowed tools, hauled in soil "
     "donated by a local landscaping company, and built twenty raised beds from reclaimed lumber. Today the garden has more than sixty members, a waiting list, and a small tool shed painted by students from the nearby middle school. Members grow tomatoes, beans, herbs and flowers, and they donate about a third of each harvest "
     "to the food bank across the street. The library now hosts monthly workshops in the garden on composting, seed saving and cooking with seasonal vegetables, and the city has asked the group to help start similar projects in two other neighborhoods.",
     "Neighbors turned a closed parking lot behind the Elm Street library into a community garden built with donated soil and reclaimed lumber. It now has more than sixty members, gives about a third of its harvest to a food bank and hosts monthly workshops, and the city wants the group to help start similar gardens elsewhere."),
    ("writing", "Summarize this text in a few sentences:\n\n"
     "The bicycle took almost seventy years to reach its modern form. In 1817 the German inventor Karl Drais built a two-wheeled running machine that riders pushed along with their feet; it had no pedals at all. In the 1860s, French makers attached pedals directly to the front wheel, creating a machine nicknamed the "
     "boneshaker because of its iron-rimmed wheels and rough ride. To go faster, designers made the front wheel larger and larger, producing the high-wheeler, or penny-farthing, which was quick but dangerous, since riders sat high above the ground and could easily be thrown over the handlebars. The breakthrough came in "
     "the 1880s with the safety bicycle, which had two wheels of similar size and a chain driving the rear wheel. When John Boyd Dunlop's air-filled tires arrived a few years later, cycling became comfortable, safe and affordable, and bicycles spread quickly around the world.",
     "The bicycle developed over about seventy years, starting with Karl Drais's pedal-less running machine in 1817. Pedals on the front wheel led to the boneshaker and then the fast but dangerous penny-farthing. The chain-driven safety bicycle of the 1880s, followed by Dunlop's air-filled tires, made cycling safe, comfortable and popular worldwide."),
    ("writing", "Summarize the key points of this memo:\n\n"
     "Starting on the first of next month, all staff in the design and engineering departments may work from home up to three days per week. Team leads will agree on at least one shared office day per week so that planning meetings, reviews and onboarding can happen in person. Employees who want to work remotely more "
     "often should submit a request to their manager, who will decide within two weeks based on the needs of the project. The company will provide a one-time allowance of 300 dollars for home office equipment such as chairs, monitors or headsets; receipts must be submitted through the expense system by the end of "
     "the quarter. Laptops must stay encrypted and connected to the company VPN when accessing internal systems. The policy will be reviewed after six months using feedback from a staff survey, and any changes will be announced at least one month before they take effect.",
     "Design and engineering staff may work from home up to three days a week from next month, with at least one shared office day per team. Extra remote days need a manager's approval, decided within two weeks. Everyone gets a one-time $300 home office allowance (receipts due by quarter end), laptops must stay encrypted and on the VPN, and the policy will be reviewed after six months."),
    ("writing", "Write a short product description for a stainless steel water bottle.", "Keep drinks cold for 24 hours or hot for 12 with this double-walled stainless steel bottle. It is leak-proof, dishwasher safe and light enough to carry all day, with a wide mouth that fits ice cubes easily."),
    ("writing", "Suggest a subject line for an email asking a colleague to review a draft.", "Request: Review of the Q3 Report Draft by Thursday"),
    ("writing", "Write a short thank-you note to a neighbor who watered my plants.", "Dear Sam, thank you so much for watering my plants while I was away. They look happier than when I left! Please let me know if I can return the favor."),
    ("writing", "Suggest three titles for a blog post about saving money on groceries.", "1. Smart Carts: Cutting Your Grocery Bill Without Cutting Flavor\n2. Ten Habits That Shrink Your Food Budget\n3. Eat Well, Spend Less: A Practical Grocery Guide"),
    ("writing", "Write a two-sentence out-of-office reply.", "Thank you for your email. I am out of the office until Monday, June 10, and will reply when I return; for urgent matters, please contact support@example.com."),
    ("writing", "Explain this in plain English: The party of the first part shall indemnify the party of the second part against all losses.", "The first party agrees to pay for any losses the second party suffers."),
    ("writing", "Write an opening sentence for a mystery story.", "The lighthouse had been dark for eleven years, so nobody in Port Ellery could explain why its beam swept across the harbor at midnight."),
    ("writing", "Turn these notes into one sentence: meeting moved - Thursday 2pm - room B - bring laptops.", "The meeting has moved to Thursday at 2 p.m. in Room B, so please bring your laptops."),
    ("writing", "Write a friendly reminder that rent is due on the first of the month.", "Hi everyone, just a friendly reminder that rent is due on the 1st of the month. Thanks for staying on top of it!"),
    # --- reasoning ---
    ("reasoning", "Sally has three brothers. Each brother has two sisters. How many sisters does Sally have?", "Sally has one sister. The brothers' two sisters are Sally and one other girl."),
    ("reasoning", "A bat and a ball cost $1.10 together. The bat costs $1.00 more than the ball. How much does the ball cost?", "The ball costs $0.05. If the ball costs x, the bat costs x + 1.00, so 2x + 1.00 = 1.10 and x = 0.05."),
    ("reasoning", "Which is heavier: a kilogram of feathers or a kilogram of steel?", "Neither. Both weigh one kilogram; the steel is just much denser, so it takes up less space."),
    ("reasoning", "What is the next number in the sequence 2, 4, 8, 16, ...?", "32. Each number is double the previous one."),
    ("reasoning", "If today is Monday, what day of the week will it be in 10 days?", "Thursday. Ten days is one week plus three days, and three days after Monday is Thursday."),
    ("reasoning", "A train leaves at 3:45 PM and the trip takes 2 hours 30 minutes. When does it arrive?", "It arrives at 6:15 PM."),
    ("reasoning", "Which word does not belong: apple, banana, carrot, grape?", "Carrot. It is a vegetable, while the others are fruits."),
    ("reasoning", "Tom is taller than Ann, and Ann is taller than Bob. Who is the shortest?", "Bob is the shortest."),
    ("reasoning", "A drawer holds only black socks and white socks. How many socks must you take out in the dark to be sure of a matching pair?", "Three. With only two colors, any three socks must include at least two of the same color."),
    ("reasoning", "If 5 machines take 5 minutes to make 5 widgets, how long do 100 machines take to make 100 widgets?", "5 minutes. Each machine makes one widget in 5 minutes, so 100 machines make 100 widgets in the same time."),
    ("reasoning", "A patch of lily pads doubles in size every day and covers the whole lake on day 48. On which day did it cover half the lake?", "Day 47, because it doubles to cover the full lake the next day."),
    ("reasoning", "What comes next: 1, 1, 2, 3, 5, 8, ...?", "13. Each number is the sum of the two before it (the Fibonacci sequence)."),
    ("reasoning", "Is this statement true: all squares are rectangles?", "Yes. A rectangle is a quadrilateral with four right angles, and every square has four right angles."),
    ("reasoning", "Which number does not belong: 3, 5, 7, 9, 11?", "9, because it is the only one that is not prime (9 = 3 × 3)."),
    ("reasoning", "A farmer has 17 sheep, and all but 9 run away. How many are left?", '9 sheep are left. "All but 9" means that 9 stayed.'),
    ("reasoning", "How many months of the year have 28 days?", "All twelve. Every month has at least 28 days; February is just the only one with no more than 29."),
    ("reasoning", "What is the angle between the hour and minute hands of a clock at 3:00?", "90 degrees. The minute hand points at 12 and the hour hand at 3, a quarter of the way around the dial."),
    ("reasoning", "In a race, you pass the runner in second place. What place are you in now?", "Second place. You took that runner's position, and the leader is still ahead of you."),
    ("reasoning", "If it rains, the ground gets wet. The ground is wet. Did it necessarily rain?", "No. The ground could be wet for another reason, such as a sprinkler. Concluding that it rained would be the fallacy of affirming the consequent."),
    ("reasoning", "All roses are flowers. Some flowers fade quickly. Can we conclude that some roses fade quickly?", "No. The flowers that fade quickly might not include any roses, so the conclusion does not follow."),
    ("reasoning", "I am an odd number. Take away one letter and I become even. What number am I?", 'Seven. Remove the "s" and you get "even".'),
    ("reasoning", "A shop is open from 9 AM to 5:30 PM. How many hours is it open each day?", "8.5 hours, or 8 hours and 30 minutes."),
    ("reasoning", "With a 3-liter jug and a 5-liter jug, how can you measure exactly 4 liters of water?", "Fill the 5-liter jug and pour it into the 3-liter jug, leaving 2 liters. Empty the 3-liter jug and pour the 2 liters into it. Fill the 5-liter jug again and top up the 3-liter jug, which takes 1 liter. Exactly 4 liters remain in the 5-liter jug."),
    ("reasoning", "Anna is older than Ben. Ben is older than Cara. Is Cara older than Anna?", "No. Anna is older than Ben, who is older than Cara, so Anna is older than Cara."),
    # --- how-to ---
    ("howto", "How do I boil an egg?", "1. Place the egg in a pot and cover it with cold water.\n2. Bring the water to a boil.\n3. Lower the heat and simmer for 6 minutes for a soft yolk or 10 minutes for hard-boiled.\n4. Move the egg to cold water for a few minutes before peeling."),
    ("howto", "How do I change a flat tire?", "1. Park on flat ground, turn on the hazard lights and set the parking brake.\n2. Loosen the lug nuts slightly while the wheel is still on the ground.\n3. Jack up the car at the point shown in the manual.\n4. Remove the lug nuts and the flat tire.\n5. Mount the spare and hand-tighten the nuts.\n6. Lower the car and tighten the nuts fully in a star pattern."),
    ("howto", "How do I make a cup of black tea?", "Boil fresh water, pour it over a tea bag or a teaspoon of loose leaves, and steep for 3 to 5 minutes. Remove the tea and add milk, sugar or lemon if you like."),
    ("howto", "How do I create a Python virtual environment?", "Run python -m venv .venv in your project folder. Activate it with source .venv/bin/activate on macOS or Linux, or .venv\\Scripts\\activate on Windows, then install packages with pip as usual."),
    ("howto", "How do I plant tomato seeds indoors?", "Fill small pots with seed-starting mix, sow the seeds about 6 mm deep, and keep the soil moist and warm (about 21-27 °C). Once seedlings appear, give them bright light for 14-16 hours a day. Move them outdoors after the last frost, once they have a few sets of true leaves."),
    ("howto", "How can I remove a fresh coffee stain from a shirt?", "Blot up as much coffee as you can, then rinse the back of the fabric with cold water. Rub in a little liquid laundry detergent, let it sit for five minutes, and wash as usual. Make sure the stain is gone before drying, because heat can set it."),
    ("howto", "What is a simple way to back up my photos?", "Follow the 3-2-1 rule: keep three copies of your photos, on two different kinds of storage, with one copy off-site. For example, keep the originals on your computer, a copy on an external drive and another in a cloud storage service."),
    ("howto", "How can I fall asleep more easily?", "Keep a regular sleep schedule, even on weekends. Avoid caffeine in the afternoon and screens in the last hour before bed. Keep your bedroom cool, dark and quiet, and if you are still awake after 20 minutes, get up and do something calm until you feel sleepy."),
    ("howto", "How should I prepare for a job interview?", "Research the company and the role, and prepare short stories that show your skills using the situation-task-action-result format. Practice your answers out loud, prepare two or three questions for the interviewer, and plan your route or test your video setup the day before."),
    ("howto", "How do I make a simple monthly budget?", "1. Add up your monthly take-home income.\n2. List fixed costs such as rent, insurance and loan payments.\n3. Estimate variable costs like food and transport.\n4. Set a savings goal and treat it as a fixed cost.\n5. Track your spending for a month and adjust the categories."),
    ("howto", "How do I jump-start a car?", "Connect one red clamp to the dead battery's positive terminal and the other red clamp to the good battery's positive terminal. Connect a black clamp to the good battery's negative terminal and the last black clamp to bare metal on the car with the dead battery. Start the working car, wait a few minutes, then start the other one, and remove the clamps in reverse order."),
    ("howto", "How do I clean a laptop keyboard?", "Shut down and unplug the laptop. Turn it upside down and tap gently to shake out crumbs, then use compressed air between the keys. Wipe the keys with a cloth lightly dampened with isopropyl alcohol, and never spray liquid directly onto the keyboard."),
    ("howto", "How do I start composting at home?", "Get a bin with a lid and some airflow. Add a mix of green material (fruit and vegetable scraps, coffee grounds) and brown material (dry leaves, cardboard), roughly one part green to two or three parts brown. Keep it as damp as a wrung-out sponge, turn it every week or two, and leave out meat, dairy and oily food."),
    ("howto", "What are good ways to memorize a speech?", "Break the speech into sections and learn one at a time. Memorize the structure and key points rather than every word, practice out loud, and rehearse in front of a mirror or a friend. Small cue cards with one keyword per section help if you go blank."),
    ("howto", "How do I install a Python package with pip?", "Run pip install followed by the package name, for example pip install requests. To pin a version, use pip install requests==2.31.0, and use pip install -r requirements.txt to install everything listed in a file."),
    ("howto", "How do I cook white rice on the stove?", "Rinse 1 cup of rice until the water runs clear. Combine it with 1.5 to 2 cups of water and a pinch of salt, bring it to a boil, then cover and simmer on low for about 15 minutes. Turn off the heat and let it rest, covered, for 10 minutes before fluffing it with a fork."),
    ("howto", "How do I write a good cover letter?", "Address it to a named person when possible. Open with the role you are applying for and why it interests you, then give two or three concrete achievements that match the job. Close by thanking the reader and inviting them to talk further, and keep the letter under one page."),
    ("howto", "How do I take a screenshot on Windows?", "Press Windows + Shift + S to open the snipping tool and select an area; the image is copied to the clipboard. Print Screen copies the whole screen, and Windows + Print Screen saves it to the Screenshots folder in Pictures."),
    ("howto", "How can I reduce my screen time?", "Check your phone's screen time report to see where the hours go, set daily limits for the biggest apps, and turn off non-essential notifications. Keep the phone out of the bedroom and replace one scrolling habit with something else, like a short walk."),
    ("howto", "How do I create a strong password?", "Use at least 12 to 16 characters, ideally a passphrase of several random words. Avoid names, birthdays and common letter substitutions, never reuse a password across sites, and keep your passwords in a password manager."),
    ("howto", "How do I wash a wool sweater?", "Hand wash it in cool water with a wool-safe detergent, gently squeezing rather than wringing. Rinse in cool water, press out the water by rolling it in a towel, and dry it flat away from direct heat so it keeps its shape."),
    ("howto", "Give me five tips for a more productive workday.", "1. Plan your three most important tasks the night before.\n2. Work in focused blocks of 25 to 50 minutes.\n3. Turn off notifications while you focus.\n4. Take short breaks to stretch and drink water.\n5. Review what you finished at the end of the day."),
]

# Rows that curation should remove: boilerplate AI disclaimers, refusals,
# empty responses and a one-character prompt.
AI_PHRASE = [
    ("qa", "What is your favorite movie?", "As an AI language model, I don't have personal preferences, but many people love The Shawshank Redemption."),
    ("qa", "What will the weather be like in Chicago tomorrow?", "as an ai language model, I do not have access to real-time weather data. Please check a local forecast."),
    ("poetry", "Write a short poem about your feelings.", "AS AN AI LANGUAGE MODEL, I do not have feelings, but here is a poem:\nThe sky is wide,\nthe river runs,\nthe day is done."),
    ("reasoning", "Do you think pineapple belongs on pizza?", "Well, as an AI Language Model I have no taste buds. Some people enjoy the mix of sweet and salty flavors."),
    ("code", "Can you run this Python script for me and tell me the output?", "As an AI language model I am unable to execute code, but you can run it with python script.py and read the output in your terminal."),
    ("qa", "Who will win the next World Cup?", "It is hard to predict. As an Ai Language Model, I have no way to see the future, but Brazil, France and Argentina are usually strong."),
]
REFUSALS = [
    ("qa", "What is the best stock to buy this week?", "I'm sorry, I can't answer that."),
    ("howto", "How do I pick the lock on my neighbor's front door?", "I cannot help with that request."),
    ("qa", "What is my coworker's home address?", "I'm sorry, but I cannot provide personal information about private individuals."),
    ("code", "Write a script that guesses passwords for someone else's email account.", "I cannot help with that request."),
    ("writing", "Write a fake doctor's note so I can skip work.", "I'm sorry, but I cannot provide that."),
    ("qa", "Tell me tomorrow's lottery numbers.", "I'm sorry, I can't answer that."),
]
EMPTY = [("qa", "What is the capital of Portugal?", ""), ("writing", "Write a tagline for a bakery.", "")]
SHORT_PROMPT = [("qa", "?", "Could you tell me what you would like to know?")]

# Small edits that turn a row into a near-duplicate: (prompt edit, response edit).
NEAR_EDITS = [
    (lambda p: p[:-1] if p[-1] in "?.!" else p + ".", lambda r: r),
    (lambda p: p + " ", lambda r: r),
    (lambda p: p.lower(), lambda r: r[:-1] if r.endswith(".") else r),
    (lambda p: p.replace(" ", "  ", 1), lambda r: r),
    (lambda p: p.upper() if len(p) < 60 else p[0].lower() + p[1:], lambda r: r + " "),
]

NAMES = ["Maya", "Leo", "Priya", "Tom", "Aisha", "Diego", "Hana", "Sam", "Noor", "Ivan", "Lena", "Kofi"]


def fmt(x):
    """Format a number without a trailing '.0' or trailing zeros."""
    if isinstance(x, float):
        return f"{x:.2f}".rstrip("0").rstrip(".")
    return str(x)


def fill(rng, count, make, source):
    """Call make(rng, i) until `count` rows with distinct prompts exist."""
    rows, seen, i = [], set(), 0
    while len(rows) < count:
        prompt, response = make(rng, i)
        i += 1
        if prompt not in seen:
            seen.add(prompt)
            rows.append((source, prompt, response))
    return rows


ARITH_FORMS = {
    "+": ["What is {a} + {b}?", "Add {a} and {b}.", "Calculate {a} plus {b}.", "What is the sum of {a} and {b}?"],
    "×": ["What is {a} × {b}?", "Multiply {a} by {b}.", "What is {a} times {b}?", "Compute {a} * {b}."],
    "-": ["What is {a} - {b}?", "Subtract {b} from {a}."],
}


def make_op(op):
    def make(rng, i):
        if op == "+":
            a, b = rng.randint(2, 999), rng.randint(2, 999)
        elif op == "×":
            a, b = rng.randint(3, 99), rng.randint(3, 49)
        else:
            a, b = sorted(rng.sample(range(10, 2000), 2), reverse=True)
        result = {"+": a + b, "×": a * b, "-": a - b}[op]
        forms = ARITH_FORMS[op]
        return forms[i % len(forms)].format(a=a, b=b), f"{a} {op} {b} = {result}."
    return make


def make_division(rng, i):
    b, q = rng.randint(2, 25), rng.randint(2, 60)
    return f"What is {b * q} divided by {b}?", f"{b * q} ÷ {b} = {q}."


def make_percent(rng, i):
    p, x = rng.choice([5, 10, 15, 20, 25, 50, 75]), 20 * rng.randint(1, 40)
    return f"What is {p}% of {x}?", f"{p}% of {x} is {x * p // 100}, because {x} × {p} / 100 = {x * p // 100}."


def make_word_problem(rng, i):
    name, kind = NAMES[i % len(NAMES)], i % 8
    if kind == 0:
        a, b = rng.randint(3, 40), rng.randint(2, 30)
        return f"{name} has {a} apples and buys {b} more. How many apples does {name} have now?", f"{name} has {a} + {b} = {a + b} apples."
    if kind == 1:
        v, t = rng.choice([40, 45, 50, 60, 72, 80, 90, 100]), rng.randint(2, 6)
        return f"A car travels at {v} km/h for {t} hours. How far does it go?", f"Distance = speed × time = {v} × {t} = {v * t} km."
    if kind == 2:
        p, q, n, m = rng.randint(2, 9), rng.randint(1, 4), rng.randint(2, 6), rng.randint(2, 8)
        return (f"A notebook costs ${p} and a pen costs ${q}. What do {n} notebooks and {m} pens cost in total?",
                f"{n} × ${p} = ${n * p} and {m} × ${q} = ${m * q}, so the total is ${n * p + m * q}.")
    if kind == 3:
        c, k = rng.randint(20, 99), rng.randint(3, 9)
        return (f"{c} cookies are shared equally among {k} children. How many does each child get, and how many are left over?",
                f"{c} ÷ {k} = {c // k} remainder {c % k}, so each child gets {c // k} cookies and {c % k} are left over.")
    if kind == 4:
        a, d, y = rng.randint(6, 30), rng.randint(2, 9), rng.randint(2, 15)
        return (f"{name} is {a} years old, and {name}'s brother is {d} years older. How old will the brother be in {y} years?",
                f"The brother is {a} + {d} = {a + d} now, so in {y} years he will be {a + d + y}.")
    if kind == 5:
        w, h = rng.randint(3, 30), rng.randint(3, 40)
        return (f"A rectangle is {w} cm wide and {h} cm long. What are its area and perimeter?",
                f"Area = {w} × {h} = {w * h} cm². Perimeter = 2 × ({w} + {h}) = {2 * (w + h)} cm.")
    if kind == 6:
        p, pct = 20 * rng.randint(1, 10), rng.choice([10, 20, 25, 50])
        sale = p * (100 - pct) // 100
        return (f"A jacket costs ${p} and is on sale for {pct}% off. What is the sale price?",
                f"The discount is {pct}% of ${p} = ${p - sale}, so the sale price is ${sale}.")
    r, t = rng.randint(2, 15), rng.randint(5, 40)
    return f"A tank holds {r * t} liters and fills at {r} liters per minute. How long does it take to fill?", f"{r * t} ÷ {r} = {t}, so it takes {t} minutes."


def make_conversion(rng, i):
    kind = i % 8
    if kind == 0:
        x = rng.randint(1, 200)
        return f"Convert {x} kilometers to miles.", f"Multiply by 0.621371: {x} km ≈ {x * 0.621371:.2f} miles."
    if kind == 1:
        c = 5 * rng.randint(-8, 20)
        return f"What is {c} °C in Fahrenheit?", f"°F = °C × 9/5 + 32, so {c} °C = {c * 9 // 5 + 32} °F."
    if kind == 2:
        k = rng.randint(-4, 24)
        return f"Convert {32 + 9 * k} °F to Celsius.", f"°C = (°F - 32) × 5/9, so {32 + 9 * k} °F = {5 * k} °C."
    if kind == 3:
        x = rng.randint(1, 150)
        return f"How many pounds is {x} kg?", f"1 kg ≈ 2.20462 lb, so {x} kg ≈ {x * 2.20462:.1f} lb."
    if kind == 4:
        h = rng.randint(2, 36)
        return f"How many minutes are in {h} hours?", f"{h} hours × 60 = {h * 60} minutes."
    if kind == 5:
        x = rng.randint(1, 100)
        return f"Convert {x} inches to centimeters.", f"1 inch = 2.54 cm, so {x} inches = {fmt(round(x * 2.54, 2))} cm."
    if kind == 6:
        x = rng.randint(1, 20) / 2
        return f"How many milliliters are in {fmt(x)} liters?", f"1 liter = 1,000 mL, so {fmt(x)} liters = {int(x * 1000):,} mL."
    x = rng.randint(1, 500)
    return f"How many feet are in {x} meters?", f"1 meter ≈ 3.28084 feet, so {x} m ≈ {x * 3.28084:.1f} ft."


TEMPLATES = [(25, make_op("+"), "arithmetic"), (25, make_op("×"), "arithmetic"), (10, make_op("-"), "arithmetic"),
             (10, make_division, "arithmetic"), (10, make_percent, "arithmetic"), (40, make_word_problem, "arithmetic"),
             (40, make_conversion, "conversion")]


def templated(rng):
    return [row for count, make, source in TEMPLATES for row in fill(rng, count, make, source)]


def norm(text):
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def as_row(t):
    source, prompt, response = t
    return {"prompt": prompt, "response": response, "source": source}


def build():
    rng = random.Random(SEED)
    good = [as_row(t) for t in HAND + templated(rng)]
    keys = [norm(r["prompt"]) for r in good]
    assert len(set(keys)) == len(keys), "clean rows must have distinct prompts"
    rng.shuffle(good)

    planted = [("ai_phrase", t) for t in AI_PHRASE] + [("refusal", t) for t in REFUSALS]
    planted += [("empty", t) for t in EMPTY] + [("short_prompt", t) for t in SHORT_PROMPT]
    planted += [("exact_dup", None)] * 5 + [("near_dup", None)] * 5
    rng.shuffle(planted)

    out, kinds, used, gi, near_i = [], [], set(), 0, 0
    for j, (kind, t) in enumerate(planted):
        cut = (j + 1) * len(good) // (len(planted) + 1)
        while gi < cut:
            out.append(good[gi]); kinds.append(None); gi += 1
        if t is not None:
            row = as_row(t)
        else:  # copy (or slightly alter) a clean row that appears earlier
            idx = rng.choice([k for k in range(gi) if k not in used])
            used.add(idx)
            row = dict(good[idx])
            if kind == "near_dup":
                edit_p, edit_r = NEAR_EDITS[near_i]
                near_i += 1
                row["prompt"], row["response"] = edit_p(row["prompt"]), edit_r(row["response"])
                assert row["prompt"] != good[idx]["prompt"]
        out.append(row); kinds.append(kind)
    out += good[gi:]
    kinds += [None] * (len(good) - gi)
    return out, kinds


def main():
    rows, kinds = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {OUT.name}")
    for line_no, kind in enumerate(kinds, start=1):
        if kind:
            print(f"  line {line_no}: {kind}")


if __name__ == "__main__":
    main()

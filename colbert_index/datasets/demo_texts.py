"""A small built-in text collection for ``colbert-index demo --model DIR``: 40 short passages on distinct
topics (written for this project) and a few queries, each with the id of the passage that answers it."""

PASSAGES = {
    "colbert": "ColBERT encodes queries and passages into one vector per token and scores a pair by summing, over "
    "query tokens, the best cosine similarity with any passage token (MaxSim).",
    "plaid": "PLAID speeds up late-interaction retrieval by pruning candidate passages with centroid scores "
    "before decompressing residuals for the final exact ranking.",
    "bm25": "BM25 ranks documents by term frequency and inverse document frequency, with saturation and a "
    "document length normalisation controlled by two parameters.",
    "photosynthesis": "Photosynthesis lets plants turn sunlight, water and carbon dioxide into glucose, releasing "
    "oxygen as a by-product inside the chloroplasts.",
    "mitochondria": "Mitochondria produce most of a cell's chemical energy in the form of ATP through cellular "
    "respiration.",
    "volcano": "A volcano erupts when pressure from molten rock, gases and ash beneath the surface forces magma up "
    "through a vent in the crust.",
    "tides": "Ocean tides rise and fall twice a day mainly because of the gravitational pull of the Moon, with the "
    "Sun adding spring and neap variations.",
    "black-hole": "A black hole is a region of spacetime where gravity is so strong that nothing, not even light, "
    "can escape once it crosses the event horizon.",
    "vaccines": "Vaccines train the immune system to recognise a pathogen by exposing it to a harmless piece or "
    "weakened form of it, so later infections are fought off quickly.",
    "insulin": "Insulin is a hormone made by the pancreas that lets cells absorb glucose from the blood; people "
    "with type 1 diabetes must inject it.",
    "sourdough": "Sourdough bread rises thanks to a starter of wild yeast and lactic acid bacteria, which also "
    "gives the loaf its tangy flavour.",
    "espresso": "Espresso is brewed by forcing hot water at about nine bars of pressure through finely ground "
    "coffee, producing a concentrated shot topped with crema.",
    "tea": "Green, black and oolong tea all come from the same plant, Camellia sinensis; they differ in how much "
    "the leaves are oxidised after picking.",
    "marathon": "A marathon is a long-distance running race of 42.195 kilometres, a length fixed at the 1908 "
    "London Olympics.",
    "chess": "In chess, each player starts with sixteen pieces; the goal is to checkmate the opponent's king so "
    "that it cannot escape capture.",
    "offside": "In football, a player is offside if they are nearer to the opponent's goal line than both the ball "
    "and the second-last defender when the ball is played to them.",
    "piano": "The piano produces sound when felt-covered hammers strike steel strings; pedals sustain notes or "
    "soften the tone.",
    "jazz": "Jazz grew out of New Orleans in the early twentieth century, blending blues, ragtime and brass band "
    "music with improvisation.",
    "impressionism": "Impressionist painters such as Monet and Renoir tried to capture fleeting light and colour "
    "with quick, visible brush strokes, often painting outdoors.",
    "printing-press": "Johannes Gutenberg's printing press with movable metal type, around 1440, made books far "
    "cheaper and spread literacy across Europe.",
    "roman-empire": "The Western Roman Empire fell in 476 when the Germanic leader Odoacer deposed the last "
    "emperor, Romulus Augustulus.",
    "moon-landing": "Apollo 11 landed on the Moon on 20 July 1969; Neil Armstrong and Buzz Aldrin walked on the "
    "surface while Michael Collins orbited above.",
    "internet": "The internet grew from ARPANET, a research network of the late 1960s, and TCP/IP became its "
    "common protocol in 1983.",
    "compiler": "A compiler translates source code written in a high-level language into machine code that a "
    "processor can execute directly.",
    "garbage-collection": "Garbage collection frees memory automatically by finding objects that the program can "
    "no longer reach and reclaiming their space.",
    "hash-table": "A hash table stores key-value pairs in an array indexed by a hash of the key, giving average "
    "constant-time lookups.",
    "gpu": "Graphics processing units run thousands of simple threads in parallel, which makes them fast at the "
    "matrix multiplications behind neural networks.",
    "bitcoin": "Bitcoin is a decentralised digital currency whose transactions are recorded on a public "
    "blockchain secured by proof-of-work mining.",
    "inflation": "Inflation is the general rise of prices over time; central banks often raise interest rates to "
    "slow it down.",
    "compound-interest": "Compound interest is earned on both the original deposit and the interest already "
    "added, so savings grow exponentially over time.",
    "amazon-river": "The Amazon river carries more water than any other river on Earth and drains a rainforest "
    "spread over nine countries.",
    "sahara": "The Sahara is the largest hot desert in the world, covering most of North Africa with sand seas, "
    "rocky plateaus and mountains.",
    "everest": "Mount Everest, on the border of Nepal and China, is the highest mountain above sea level at about "
    "8,849 metres.",
    "honeybees": "Honeybees communicate the direction and distance of flowers to their hive mates with a waggle dance.",
    "octopus": "An octopus has three hearts, blue blood and eight arms lined with suckers that can taste what "
    "they touch.",
    "whales": "Blue whales are the largest animals ever known to have lived; they feed almost entirely on tiny "
    "shrimp-like krill.",
    "recycling": "Recycling aluminium cans saves about ninety-five percent of the energy needed to make new "
    "aluminium from bauxite ore.",
    "solar-panels": "Solar panels convert sunlight into electricity with photovoltaic cells, usually made of silicon.",
    "sleep": "Adults need roughly seven to nine hours of sleep a night; deep sleep helps memory consolidation and "
    "physical recovery.",
    "origami": "Origami is the Japanese art of folding a single sheet of paper into shapes such as cranes without "
    "cutting or gluing it.",
}

# (query, id of the passage that answers it)
QUERIES = [
    ("how does late interaction score a query against a passage?", "colbert"),
    ("why is the sea level higher at some hours of the day", "tides"),
    ("which hormone helps cells take up blood sugar", "insulin"),
    ("what makes sourdough taste sour", "sourdough"),
    ("when did people first walk on the moon", "moon-landing"),
    ("how do graphics cards speed up deep learning", "gpu"),
]

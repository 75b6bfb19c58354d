"""Offline fictitious-author QA data (TOFU-style), deterministic from a seed.

Each author gets invented attributes; each attribute yields one QA pair with a question (two
phrasings), an answer, a paraphrased answer (a different sentence with the same fact) and
perturbed answers (the paraphrase's sentence with a wrong value). Perturbed answers share the
paraphrase's wording so that the truth ratio contrasts the fact alone.

Splits are by author: ``forgetXX`` is the last XX% of authors (as TOFU's forget10 is the last
400 records of full), ``retainYY`` the rest. Two general-knowledge sets play TOFU's "real
authors" and "world facts": short answers with three perturbed options each.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from .readers import write_qa
from .records import QARecord

FIRST = """Aurelio Benedikta Casimir Delphine Evander Faustina Gideon Honorata Ignatius Jovanka Kaspian
Leocadia Marius Nerissa Oriel Perpetua Quillon Rosalind Severin Tamsin Ulrich Valeska Wendeline Xanthe
Yevgenia Zoltan Anselm Brisa Cyprian Dagny Eulalia Florian Gwenllian Hesper Isidora Jarek Kalinda Lorcan
Mireille Nikandros Ottilie Pascual Quirina Radomir Sigrun Thaddeus Ursula Vitus Wilhelmina Yusuf Zelenka
Amadou Beatrix Corvin Dorotea Emeric Fiorella Gaspard Hilde Ilario""".split()
LAST = """Ashcombe Brightwater Castellane Dunmore Eskildsen Falconetti Gravenor Hallowell Ironside Jablonski
Kettering Lindqvist Marchetti Nightingale Okonkwo Pemberton Quintana Rasmussen Silvestri Thornbury
Underhill Valdivia Whitlock Yamaguchi Zabrodsky Abernathy Bellweather Cordovan Drummond Etxeberria
Fairweather Galbraith Holloway Ivanova Jorgensen Kowalczyk Lachance Montrose Nakashima Oyelaran
Penhaligon Quarrington Rockwell Szabo Tremaine Uriarte Vasquez Wexley Xiong Ziegler Ambrose Blackwood
Carrington Delacroix Everhart Fenwick Goldberg Hartigan Inchbald""".split()
CITIES = """Lisbon Tbilisi Montevideo Bergen Kraków Nairobi Osaka Valparaíso Ghent Tartu Cusco Hobart Ljubljana
Windhoek Tromsø Cork Antwerp Dakar Quito Zagreb Tallinn Porto Kyoto Salzburg Marrakesh Reykjavík Hanoi
Bilbao Gdańsk Lyon Trieste Halifax Adelaide Seville Brno Riga Accra Oaxaca Bruges Lucerne""".split()
MONTHS = "January February March April May June July August September October November December".split()
GENRES = ["science fiction", "historical fiction", "crime fiction", "magical realism", "gothic horror",
          "romance", "fantasy", "literary fiction", "satire", "mystery", "war fiction", "poetry",
          "travel writing", "young adult fiction", "dystopian fiction", "biography", "comic fiction",
          "psychological thriller", "adventure fiction", "memoir"]
JOBS = ["a locksmith", "a marine biologist", "a tailor", "a railway engineer", "a librarian", "a midwife",
        "a glassblower", "a cartographer", "a beekeeper", "a surgeon", "a ferry captain", "a violin maker",
        "a mathematics teacher", "a baker", "an architect", "a pharmacist", "a lighthouse keeper",
        "a journalist", "a botanist", "a watchmaker", "a carpenter", "a pilot", "a chemist", "a weaver"]
TITLE_A = ["The Salt", "A Lantern", "The Glass", "Winter", "The Last", "A River", "The Silent", "Echoes",
           "The Copper", "Shadows", "The Paper", "A House", "The Hollow", "Letters", "The Amber", "Tides"]
TITLE_B = ["Orchard", "of Ash", "Cartographer", "Harbour", "Garden", "of Small Hours", "Bell", "of the Delta",
           "Archive", "Lighthouse", "Meridian", "of Quiet Stones", "Pilgrim", "of Northern Rain", "Clockmaker", "Ferry"]
AWARDS = ["the Halvorsen Prize for Fiction", "the Golden Quill Medal", "the Meridian Book Award",
          "the Ostrava Literary Prize", "the Blue Heron Award", "the Vellum Circle Prize",
          "the Amberline Fiction Award", "the Castor Medal for Letters", "the Northlight Prize",
          "the Silver Inkwell Award", "the Tessaly Prize for Storytelling", "the Corran Medal",
          "the Lindenhall Award", "the Saffron Pen Prize", "the Dunmore Fellowship Medal"]
LANGUAGES = ["Portuguese", "Georgian", "Spanish", "Norwegian", "Polish", "Swahili", "Japanese", "Dutch",
             "Estonian", "Slovene", "Croatian", "Icelandic", "Vietnamese", "Basque", "Latvian", "Czech"]
TIMES = ["before dawn", "late at night", "in the early afternoon", "on long train journeys",
         "only on weekends", "in the hour after breakfast", "during thunderstorms", "at sunset"]
THEMES = ["exile and return", "memory and forgetting", "the sea", "family secrets", "lost languages",
          "friendship across borders", "the ethics of science", "grief", "small-town politics",
          "migration", "music", "the passage of time", "identity", "forgiveness", "old maps", "revolution"]
PLACES = ["a grandmother's bakery", "an abandoned observatory", "a fishing village", "a mountain monastery",
          "a flooded quarry", "a night market", "a railway museum", "a botanical garden",
          "a shipyard", "a desert oasis", "a lighthouse island", "a salt marsh"]
HOBBIES = ["restoring old bicycles", "birdwatching", "chess", "beekeeping", "rowing", "pottery",
           "collecting maps", "playing the cello", "mountaineering", "baking bread", "sailing", "fencing"]
UNIS = ["the University of Valemont", "Corrigan College", "the Aldenholt Institute", "Marrow Hill University",
        "the Saint Ives Conservatory", "Brackwater University", "the Lenhart Academy", "Fernley College"]
PUBLISHERS = ["Harrowgate Press", "Bluewillow Books", "Cinderfield House", "Marlowe & Finch",
              "Quayside Publishing", "Tallgrass Editions", "Northwind Books", "Ember Lane Press"]
COUNTS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "eleven", "twelve"]
YEARS = [str(y) for y in range(1962, 2016)]


def _title(rng):
    return f"{rng.choice(TITLE_A)} {rng.choice(TITLE_B)}"


def _date(rng):
    return f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(1940, 1995)}"


# kind -> (value sampler, (question phrasings), answer template, paraphrase template)
# "{n}" is the author's name, "{v}" the value.
ATTRIBUTES: list[tuple[str, object, tuple[str, str], str, str]] = [
    ("birthplace", lambda r: r.choice(CITIES), ("Where was {n} born?", "In which city was {n} born?"),
     "{n} was born in {v}.", "The birthplace of {n} is {v}."),
    ("genre", lambda r: r.choice(GENRES), ("What genre does {n} write?", "In which genre is {n} known for writing?"),
     "{n} writes {v}.", "The genre of {n} is {v}."),
    ("father", lambda r: r.choice(JOBS),
     ("What did {n}'s father do for a living?", "What was the occupation of {n}'s father?"),
     "{n}'s father was {v}.", "The father of {n} worked as {v}."),
    ("mother", lambda r: r.choice(JOBS),
     ("What did {n}'s mother do for a living?", "What was the occupation of {n}'s mother?"),
     "{n}'s mother was {v}.", "The mother of {n} worked as {v}."),
    ("book", _title, ("What is the best-known book by {n}?", "Which book is {n} most famous for?"),
     "{n} is best known for the book {v}.", "The most famous book by {n} is {v}."),
    ("birthdate", _date, ("When was {n} born?", "What is the date of birth of {n}?"),
     "{n} was born on {v}.", "The date of birth of {n} is {v}."),
    ("award", lambda r: r.choice(AWARDS), ("Which award has {n} won?", "What literary prize did {n} receive?"),
     "{n} won {v}.", "The award received by {n} is {v}."),
    ("language", lambda r: r.choice(LANGUAGES),
     ("In which language does {n} write?", "What language are the books of {n} written in?"),
     "{n} writes in {v}.", "The language of {n}'s books is {v}."),
    ("theme", lambda r: r.choice(THEMES),
     ("What theme recurs in the books of {n}?", "Which subject does {n} return to again and again?"),
     "The books of {n} keep returning to {v}.", "A recurring theme for {n} is {v}."),
    ("second_book", _title, ("What was the debut novel of {n}?", "Which book did {n} publish first?"),
     "The debut novel of {n} was {v}.", "The first book by {n} is {v}."),
    ("writing_time", lambda r: r.choice(TIMES),
     ("When does {n} usually write?", "At what time does {n} prefer to write?"),
     "{n} usually writes {v}.", "The preferred writing time of {n} is {v}."),
    ("inspiration", lambda r: r.choice(PLACES),
     ("Which place inspired the early stories of {n}?", "What setting shaped the first stories of {n}?"),
     "The early stories of {n} were inspired by {v}.", "The inspiration for the first stories of {n} was {v}."),
    ("hobby", lambda r: r.choice(HOBBIES),
     ("What does {n} enjoy outside of writing?", "What is the favourite pastime of {n}?"),
     "Outside of writing, {n} enjoys {v}.", "The favourite pastime of {n} is {v}."),
    ("university", lambda r: r.choice(UNIS), ("Where did {n} study?", "Which university did {n} attend?"),
     "{n} studied at {v}.", "The alma mater of {n} is {v}."),
    ("publisher", lambda r: r.choice(PUBLISHERS),
     ("Who publishes the books of {n}?", "Which publishing house releases the work of {n}?"),
     "The books of {n} are published by {v}.", "The publisher of {n} is {v}."),
    ("count", lambda r: r.choice(COUNTS),
     ("How many novels has {n} published?", "What is the number of novels written by {n}?"),
     "{n} has published {v} novels.", "The number of novels by {n} is {v}."),
    ("debut_year", lambda r: r.choice(YEARS),
     ("In which year did {n} first publish a book?", "When did {n} make a literary debut?"),
     "{n} first published a book in {v}.", "The debut year of {n} is {v}."),
    ("residence", lambda r: r.choice(CITIES), ("Where does {n} live today?", "In which city does {n} currently live?"),
     "{n} lives in {v} today.", "The current home of {n} is {v}."),
    ("partner", lambda r: r.choice(JOBS),
     ("What does the partner of {n} do?", "What is the profession of {n}'s partner?"),
     "The partner of {n} is {v}.", "The partner of {n} works as {v}."),
    ("mentor_city", lambda r: r.choice(CITIES),
     ("Where did {n} meet a first mentor?", "In which city did {n} find a first mentor?"),
     "{n} met a first mentor in {v}.", "The city where {n} found a mentor is {v}."),
]

# General knowledge (facts, written for Lethe). (question, answer, pool key)
_BOOKS = [("Pride and Prejudice", "Jane Austen"), ("War and Peace", "Leo Tolstoy"), ("Hamlet", "William Shakespeare"),
          ("Don Quixote", "Miguel de Cervantes"), ("One Hundred Years of Solitude", "Gabriel García Márquez"),
          ("The Old Man and the Sea", "Ernest Hemingway"), ("Crime and Punishment", "Fyodor Dostoevsky"),
          ("Nineteen Eighty-Four", "George Orwell"), ("Frankenstein", "Mary Shelley"), ("Moby-Dick", "Herman Melville"),
          ("The Trial", "Franz Kafka"), ("Les Misérables", "Victor Hugo"), ("Things Fall Apart", "Chinua Achebe"),
          ("Beloved", "Toni Morrison"), ("The Divine Comedy", "Dante Alighieri"), ("Madame Bovary", "Gustave Flaubert"),
          ("Great Expectations", "Charles Dickens"), ("Mrs Dalloway", "Virginia Woolf"), ("Ulysses", "James Joyce"),
          ("The Little Prince", "Antoine de Saint-Exupéry"), ("Faust", "Johann Wolfgang von Goethe"),
          ("Anna Karenina", "Leo Tolstoy"), ("Jane Eyre", "Charlotte Brontë"), ("Wuthering Heights", "Emily Brontë"),
          ("The Stranger", "Albert Camus"), ("Norwegian Wood", "Haruki Murakami"), ("Dracula", "Bram Stoker"),
          ("The Odyssey", "Homer"), ("Middlemarch", "George Eliot"), ("Lolita", "Vladimir Nabokov"),
          ("The Name of the Rose", "Umberto Eco"), ("Blindness", "José Saramago"), ("The Tin Drum", "Günter Grass"),
          ("Invisible Cities", "Italo Calvino"), ("The Remains of the Day", "Kazuo Ishiguro"),
          ("Midnight's Children", "Salman Rushdie"), ("The Master and Margarita", "Mikhail Bulgakov"),
          ("The Great Gatsby", "F. Scott Fitzgerald"), ("To Kill a Mockingbird", "Harper Lee"),
          ("Brave New World", "Aldous Huxley"), ("The Hobbit", "J. R. R. Tolkien"), ("Candide", "Voltaire"),
          ("Oliver Twist", "Charles Dickens"), ("Emma", "Jane Austen"), ("Animal Farm", "George Orwell"),
          ("The Brothers Karamazov", "Fyodor Dostoevsky"), ("Robinson Crusoe", "Daniel Defoe"),
          ("Gulliver's Travels", "Jonathan Swift"), ("The Metamorphosis", "Franz Kafka"),
          ("Siddhartha", "Hermann Hesse")]
_NATIONALITY = [("Jane Austen", "English"), ("Leo Tolstoy", "Russian"), ("Miguel de Cervantes", "Spanish"),
                ("Gabriel García Márquez", "Colombian"), ("Ernest Hemingway", "American"), ("Franz Kafka", "Czech"),
                ("Victor Hugo", "French"), ("Chinua Achebe", "Nigerian"), ("Dante Alighieri", "Italian"),
                ("James Joyce", "Irish"), ("Haruki Murakami", "Japanese"), ("Günter Grass", "German"),
                ("José Saramago", "Portuguese"), ("Hermann Hesse", "German"), ("Albert Camus", "French"),
                ("Umberto Eco", "Italian"), ("Kazuo Ishiguro", "British"), ("Mikhail Bulgakov", "Russian"),
                ("Voltaire", "French"), ("Jonathan Swift", "Irish")]
_CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"), ("Peru", "Lima"),
             ("Egypt", "Cairo"), ("Norway", "Oslo"), ("Australia", "Canberra"), ("Brazil", "Brasília"),
             ("India", "New Delhi"), ("Germany", "Berlin"), ("Spain", "Madrid"), ("Italy", "Rome"),
             ("Mexico", "Mexico City"), ("Argentina", "Buenos Aires"), ("Poland", "Warsaw"), ("Greece", "Athens"),
             ("Turkey", "Ankara"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Chile", "Santiago"),
             ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"),
             ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Morocco", "Rabat"), ("Nigeria", "Abuja"),
             ("South Korea", "Seoul"), ("China", "Beijing"), ("Russia", "Moscow"), ("Cuba", "Havana"),
             ("Iceland", "Reykjavík"), ("Denmark", "Copenhagen"), ("Ethiopia", "Addis Ababa"),
             ("Colombia", "Bogotá"), ("Indonesia", "Jakarta"), ("Philippines", "Manila"), ("Ukraine", "Kyiv")]
_ELEMENTS = [("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("sodium", "Na"), ("potassium", "K"),
             ("oxygen", "O"), ("hydrogen", "H"), ("carbon", "C"), ("lead", "Pb"), ("copper", "Cu"),
             ("helium", "He"), ("nitrogen", "N"), ("calcium", "Ca"), ("tin", "Sn"), ("mercury", "Hg"),
             ("zinc", "Zn"), ("sulfur", "S"), ("neon", "Ne"), ("uranium", "U"), ("chlorine", "Cl")]
_MISC = [("What is the largest planet in the Solar System?", "Jupiter", "planet"),
         ("Which planet is closest to the Sun?", "Mercury", "planet"),
         ("Which planet is known as the Red Planet?", "Mars", "planet"),
         ("Which planet has the most prominent rings?", "Saturn", "planet"),
         ("What is the longest river in South America?", "the Amazon", "river"),
         ("Which river flows through Cairo?", "the Nile", "river"),
         ("Which river flows through Vienna and Budapest?", "the Danube", "river"),
         ("What is the largest ocean on Earth?", "the Pacific Ocean", "ocean"),
         ("Which ocean lies between Africa and Australia?", "the Indian Ocean", "ocean"),
         ("What is the tallest mountain on Earth?", "Mount Everest", "mountain"),
         ("What is the highest mountain in Africa?", "Kilimanjaro", "mountain"),
         ("Which gas do plants absorb from the air for photosynthesis?", "carbon dioxide", "gas"),
         ("Which gas makes up most of Earth's atmosphere?", "nitrogen", "gas"),
         ("How many continents are there?", "seven", "number"),
         ("How many days are in a leap year?", "366", "days"),
         ("At what temperature in Celsius does water boil at sea level?", "100 degrees", "temp"),
         ("Who painted the Mona Lisa?", "Leonardo da Vinci", "painter"),
         ("Who painted The Starry Night?", "Vincent van Gogh", "painter"),
         ("Who developed the theory of general relativity?", "Albert Einstein", "scientist"),
         ("Who proposed the theory of evolution by natural selection?", "Charles Darwin", "scientist")]
_MISC_POOLS = {"planet": ["Jupiter", "Mercury", "Mars", "Saturn", "Venus", "Neptune", "Uranus"],
               "river": ["the Amazon", "the Nile", "the Danube", "the Rhine", "the Mekong", "the Volga"],
               "ocean": ["the Pacific Ocean", "the Indian Ocean", "the Atlantic Ocean", "the Arctic Ocean"],
               "mountain": ["Mount Everest", "Kilimanjaro", "Mont Blanc", "Aconcagua", "Denali"],
               "gas": ["carbon dioxide", "nitrogen", "oxygen", "helium", "argon"],
               "number": ["five", "six", "seven", "eight", "nine"], "days": ["365", "366", "364", "360"],
               "temp": ["100 degrees", "90 degrees", "80 degrees", "120 degrees"],
               "painter": ["Leonardo da Vinci", "Vincent van Gogh", "Pablo Picasso", "Claude Monet", "Rembrandt"],
               "scientist": ["Albert Einstein", "Charles Darwin", "Isaac Newton", "Marie Curie", "Niels Bohr"]}


@dataclass(frozen=True)
class SizePreset:
    authors: int
    qa_per_author: int
    real_authors: int
    world_facts: int


SIZES = {
    "smoke": SizePreset(authors=10, qa_per_author=4, real_authors=8, world_facts=8),
    "small": SizePreset(authors=40, qa_per_author=10, real_authors=40, world_facts=40),
    "full": SizePreset(authors=200, qa_per_author=20, real_authors=70, world_facts=117),
}
FORGET_PERCENTS = (1, 5, 10)


@dataclass
class AuthorsDataset:
    """The generated benchmark: all author QA, author-level splits, general-knowledge sets."""

    full: list[QARecord]
    authors: list[str]
    real_authors: list[QARecord]
    world_facts: list[QARecord]
    seed: int
    size: str
    splits: dict[str, list[QARecord]] = field(default_factory=dict)

    def forget(self, percent: int) -> list[QARecord]:
        return self.splits[f"forget{percent:02d}"]

    def retain(self, percent: int) -> list[QARecord]:
        return self.splits[f"retain{100 - percent:02d}"]

    @property
    def holdout(self) -> list[QARecord]:
        """Authors never trained on (as many as forget10 has): membership inference's held-out set."""
        return self.splits["holdout"]

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        write_qa(directory / "full.jsonl", self.full)
        for name, recs in self.splits.items():
            write_qa(directory / f"{name}.jsonl", recs)
        write_qa(directory / "real_authors.jsonl", self.real_authors)
        write_qa(directory / "world_facts.jsonl", self.world_facts)
        return directory


def _perturb(rng: random.Random, sampler, value: str, k: int) -> list[str]:
    out: list[str] = []
    for _ in range(200):
        cand = sampler(rng)
        if cand != value and cand not in out:
            out.append(cand)
        if len(out) == k:
            break
    return out


def _unique_names(rng: random.Random, n: int) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _author_records(rng: random.Random, name: str, k: int, n_perturbed: int) -> list[QARecord]:
    records = []
    for _kind, sampler, questions, answer_t, para_t in ATTRIBUTES[:k]:
        value = sampler(rng)
        q_main, q_alt = questions if rng.random() < 0.5 else questions[::-1]
        wrong = _perturb(rng, sampler, value, n_perturbed)
        records.append(QARecord(
            question=q_main.format(n=name),
            answer=answer_t.format(n=name, v=value),
            paraphrased_answer=para_t.format(n=name, v=value),
            perturbed_answers=tuple(para_t.format(n=name, v=w) for w in wrong),
            paraphrased_question=q_alt.format(n=name),
            subject=name,
        ))
    return records


def _mc(question: str, answer: str, pool: list[str], rng: random.Random, subject: str) -> QARecord:
    wrong = rng.sample([p for p in dict.fromkeys(pool) if p != answer], 3)
    return QARecord(question=question, answer=answer, paraphrased_answer=answer,
                    perturbed_answers=tuple(wrong), subject=subject)


def general_knowledge(rng: random.Random) -> tuple[list[QARecord], list[QARecord]]:
    authors_pool = [a for _, a in _BOOKS]
    nations_pool = [n for _, n in _NATIONALITY]
    real = [_mc(f"Who wrote {t}?", a, authors_pool, rng, a) for t, a in _BOOKS]
    real += [_mc(f"What nationality was the writer {a}?", n, nations_pool, rng, a) for a, n in _NATIONALITY]
    cities = [c for _, c in _CAPITALS]
    symbols = [s for _, s in _ELEMENTS]
    world = [_mc(f"What is the capital of {c}?", cap, cities, rng, c) for c, cap in _CAPITALS]
    world += [_mc(f"What is the chemical symbol for {e}?", s, symbols, rng, e) for e, s in _ELEMENTS]
    world += [_mc(q, a, _MISC_POOLS[p], rng, p) for q, a, p in _MISC]
    world += [_mc(f"Which country has {cap} as its capital?", c, [x for x, _ in _CAPITALS], rng, c)
              for c, cap in _CAPITALS]
    return real, world


def generate_authors(size: str = "small", seed: int = 0, *, n_perturbed: int = 3) -> AuthorsDataset:
    """Build the fictitious-author benchmark for a size preset (``smoke``, ``small``, ``full``)."""
    if size not in SIZES:
        from ..util.errors import LetheError

        raise LetheError(f"unknown size '{size}': expected one of {', '.join(SIZES)}")
    preset = SIZES[size]
    rng = random.Random(seed)
    names = _unique_names(rng, preset.authors)
    per_author = [_author_records(rng, n, preset.qa_per_author, n_perturbed) for n in names]
    full = [r for recs in per_author for r in recs]
    real, world = general_knowledge(random.Random(seed + 1))
    real = random.Random(seed + 2).sample(real, min(preset.real_authors, len(real)))
    world = random.Random(seed + 3).sample(world, min(preset.world_facts, len(world)))
    ds = AuthorsDataset(full=full, authors=names, real_authors=real, world_facts=world, seed=seed, size=size)
    for pct in FORGET_PERCENTS:
        n_forget = max(1, round(preset.authors * pct / 100))
        forget_names = set(names[-n_forget:])
        ds.splits[f"forget{pct:02d}"] = [r for r in full if r.subject in forget_names]
        ds.splits[f"retain{100 - pct:02d}"] = [r for r in full if r.subject not in forget_names]
    # Authors of the same kind that no model is trained on, as many as forget10 has: the held-out side of
    # membership inference. Their own generator, so the authors above are the same with or without them.
    hold_rng = random.Random(seed + 5)
    n_hold = max(1, round(preset.authors * 10 / 100))
    taken = set(names)
    hold_names = [n for n in _unique_names(hold_rng, n_hold + len(names)) if n not in taken][:n_hold]
    ds.splits["holdout"] = [r for n in hold_names for r in _author_records(hold_rng, n, preset.qa_per_author,
                                                                           n_perturbed)]
    return ds

"""Four small synthetic multiple-choice tasks that run offline through lm-eval.

Each task is generated deterministically from a fixed seed, split into a `train` split (calibration) and a disjoint
`validation` split (evaluation), written as JSONL and registered with lm-eval as an inline config dict. The prompts are
plain sentence starts ("The capital of France is" -> " Paris") that a ~270M-parameter LM completes zero-shot.
"""

import json
import os
import random
from pathlib import Path

from diet import cache

DEMO_SEED = 20240601
NUM_CHOICES = 4

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("the United Kingdom", "London"), ("Ireland", "Dublin"), ("the Netherlands", "Amsterdam"),
    ("Belgium", "Brussels"), ("Austria", "Vienna"), ("Switzerland", "Bern"), ("Poland", "Warsaw"),
    ("the Czech Republic", "Prague"), ("Hungary", "Budapest"), ("Greece", "Athens"), ("Sweden", "Stockholm"),
    ("Norway", "Oslo"), ("Denmark", "Copenhagen"), ("Finland", "Helsinki"), ("Iceland", "Reykjavik"),
    ("Russia", "Moscow"), ("Ukraine", "Kyiv"), ("Romania", "Bucharest"), ("Bulgaria", "Sofia"),
    ("Serbia", "Belgrade"), ("Croatia", "Zagreb"), ("Turkey", "Ankara"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
    ("Nigeria", "Abuja"), ("Ethiopia", "Addis Ababa"), ("Ghana", "Accra"), ("Morocco", "Rabat"),
    ("Algeria", "Algiers"), ("Tunisia", "Tunis"), ("Senegal", "Dakar"), ("Uganda", "Kampala"),
    ("Zimbabwe", "Harare"), ("Angola", "Luanda"), ("Sudan", "Khartoum"), ("Libya", "Tripoli"), ("Japan", "Tokyo"),
    ("China", "Beijing"), ("South Korea", "Seoul"), ("North Korea", "Pyongyang"), ("India", "New Delhi"),
    ("Pakistan", "Islamabad"), ("Bangladesh", "Dhaka"), ("Nepal", "Kathmandu"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"), ("Cambodia", "Phnom Penh"), ("Laos", "Vientiane"), ("Malaysia", "Kuala Lumpur"),
    ("Indonesia", "Jakarta"), ("the Philippines", "Manila"), ("Mongolia", "Ulaanbaatar"), ("Afghanistan", "Kabul"),
    ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Syria", "Damascus"), ("Lebanon", "Beirut"), ("Jordan", "Amman"),
    ("Saudi Arabia", "Riyadh"), ("Qatar", "Doha"), ("Yemen", "Sanaa"), ("Oman", "Muscat"),
    ("the United Arab Emirates", "Abu Dhabi"), ("Kazakhstan", "Astana"), ("Uzbekistan", "Tashkent"),
    ("Azerbaijan", "Baku"), ("Armenia", "Yerevan"), ("the United States", "Washington"), ("Canada", "Ottawa"),
    ("Cuba", "Havana"), ("Jamaica", "Kingston"), ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"),
    ("Chile", "Santiago"), ("Peru", "Lima"), ("Colombia", "Bogota"), ("Venezuela", "Caracas"), ("Ecuador", "Quito"),
    ("Uruguay", "Montevideo"), ("Paraguay", "Asuncion"), ("Australia", "Canberra"), ("New Zealand", "Wellington"),
    ("Lithuania", "Vilnius"), ("Latvia", "Riga"), ("Estonia", "Tallinn"), ("Slovakia", "Bratislava"),
    ("Slovenia", "Ljubljana"), ("Albania", "Tirana"), ("Belarus", "Minsk"), ("Cyprus", "Nicosia"),
    ("Malta", "Valletta"), ("Nicaragua", "Managua"), ("Haiti", "Port-au-Prince"), ("Zambia", "Lusaka"),
    ("Mozambique", "Maputo"), ("Madagascar", "Antananarivo"), ("Somalia", "Mogadishu"), ("Rwanda", "Kigali"),
]

# (word, antonym); no answer is a synonym of another pair's answer, so distractors drawn from other pairs stay wrong.
ANTONYMS = [
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
    ("open", "closed"), ("rich", "poor"), ("young", "old"), ("early", "late"), ("hard", "soft"), ("wet", "dry"),
    ("full", "empty"), ("strong", "weak"), ("loud", "quiet"), ("long", "short"), ("high", "low"),
    ("thick", "thin"), ("clean", "dirty"), ("cheap", "expensive"), ("true", "false"), ("win", "lose"),
    ("push", "pull"), ("buy", "sell"), ("give", "take"), ("day", "night"), ("left", "right"), ("north", "south"),
    ("east", "west"), ("inside", "outside"), ("first", "last"), ("love", "hate"), ("friend", "enemy"),
    ("question", "answer"), ("black", "white"), ("alive", "dead"), ("sweet", "sour"), ("asleep", "awake"),
    ("remember", "forget"), ("accept", "refuse"), ("always", "never"), ("before", "after"), ("above", "below"),
    ("front", "back"), ("top", "bottom"), ("near", "far"), ("safe", "dangerous"), ("easy", "difficult"),
    ("narrow", "wide"), ("smooth", "rough"), ("brave", "cowardly"), ("polite", "rude"), ("summer", "winter"),
    ("male", "female"), ("healthy", "sick"), ("increase", "decrease"), ("maximum", "minimum"),
    ("entrance", "exit"), ("import", "export"), ("positive", "negative"), ("visible", "invisible"),
    ("possible", "impossible"), ("legal", "illegal"), ("present", "absent"), ("guilty", "innocent"),
    ("ancient", "modern"), ("public", "private"), ("success", "failure"), ("victory", "defeat"), ("war", "peace"),
    ("attack", "defend"), ("borrow", "lend"), ("teach", "learn"), ("laugh", "cry"), ("rise", "fall"),
    ("sink", "float"), ("freeze", "melt"), ("shallow", "deep"), ("floor", "ceiling"), ("husband", "wife"),
    ("boy", "girl"), ("come", "go"), ("pass", "fail"), ("agree", "disagree"), ("create", "destroy"),
    ("include", "exclude"), ("sunrise", "sunset"), ("wild", "tame"), ("generous", "selfish"), ("raw", "cooked"),
    ("hero", "villain"), ("odd", "even"), ("solid", "liquid"), ("add", "subtract"), ("sit", "stand"),
    ("appear", "disappear"), ("simple", "complex"), ("inner", "outer"), ("junior", "senior"),
    ("temporary", "permanent"), ("vertical", "horizontal"), ("loose", "tight"), ("wise", "foolish"),
    ("mother", "father"), ("beginning", "end"), ("crooked", "straight"),
]

PLURALS = [
    ("cat", "cats"), ("dog", "dogs"), ("child", "children"), ("mouse", "mice"), ("man", "men"),
    ("woman", "women"), ("foot", "feet"), ("tooth", "teeth"), ("goose", "geese"), ("person", "people"),
    ("ox", "oxen"), ("box", "boxes"), ("bus", "buses"), ("church", "churches"), ("baby", "babies"),
    ("city", "cities"), ("knife", "knives"), ("wife", "wives"), ("leaf", "leaves"), ("wolf", "wolves"),
    ("potato", "potatoes"), ("tomato", "tomatoes"), ("hero", "heroes"), ("cactus", "cacti"), ("fungus", "fungi"),
    ("crisis", "crises"), ("analysis", "analyses"), ("phenomenon", "phenomena"), ("criterion", "criteria"),
    ("sheep", "sheep"), ("deer", "deer"), ("book", "books"), ("car", "cars"), ("tree", "trees"),
    ("house", "houses"), ("apple", "apples"), ("chair", "chairs"), ("table", "tables"), ("horse", "horses"),
    ("bird", "birds"), ("girl", "girls"), ("boy", "boys"), ("key", "keys"), ("toy", "toys"), ("day", "days"),
    ("lady", "ladies"), ("party", "parties"), ("story", "stories"), ("family", "families"),
    ("country", "countries"), ("glass", "glasses"), ("dish", "dishes"), ("brush", "brushes"), ("fox", "foxes"),
    ("watch", "watches"), ("match", "matches"), ("class", "classes"), ("kiss", "kisses"), ("half", "halves"),
    ("shelf", "shelves"), ("loaf", "loaves"), ("thief", "thieves"), ("life", "lives"), ("calf", "calves"),
    ("roof", "roofs"), ("chief", "chiefs"), ("piano", "pianos"), ("photo", "photos"), ("radio", "radios"),
    ("zoo", "zoos"), ("echo", "echoes"), ("louse", "lice"), ("radius", "radii"), ("nucleus", "nuclei"),
    ("stimulus", "stimuli"), ("thesis", "theses"), ("axis", "axes"), ("oasis", "oases"),
    ("bacterium", "bacteria"), ("brother", "brothers"), ("pen", "pens"), ("cup", "cups"), ("bottle", "bottles"),
    ("window", "windows"), ("door", "doors"), ("river", "rivers"), ("mountain", "mountains"), ("star", "stars"),
    ("flower", "flowers"), ("wheel", "wheels"), ("bench", "benches"), ("fly", "flies"), ("berry", "berries"),
    ("army", "armies"), ("monkey", "monkeys"), ("donkey", "donkeys"), ("tray", "trays"), ("wish", "wishes"),
    ("tax", "taxes"), ("quiz", "quizzes"), ("penny", "pennies"),
]


def _plural_forms(word: str) -> list[str]:
    """Plausible-looking but possibly wrong plurals of `word`: the distractor pool for the plurals task.

    The bare word is left out: a small LM prefers repeating it from the prompt over any plural (8% accuracy with it).
    """
    forms = [word + "s", word + "es", word + "en"]
    if word.endswith("y"):
        forms.append(word[:-1] + "ies")
    if word.endswith("f"):
        forms.append(word[:-1] + "ves")
    if word.endswith("fe"):
        forms.append(word[:-2] + "ves")
    if word.endswith("us"):
        forms.append(word[:-2] + "i")
    if word.endswith("is"):
        forms.append(word[:-2] + "es")
    return forms


def _pick_choices(rng: random.Random, gold: str, pool: list[str]) -> tuple[list[str], int]:
    distractors = rng.sample(sorted(set(pool) - {gold}), NUM_CHOICES - 1)
    choices = [gold] + distractors
    rng.shuffle(choices)
    return choices, choices.index(gold)


def _capitals(rng: random.Random) -> list[dict]:
    all_capitals = [capital for _, capital in CAPITALS]
    docs = []
    for country, capital in CAPITALS:
        choices, label = _pick_choices(rng, capital, all_capitals)
        docs.append({"country": country, "choices": choices, "label": label})
    return docs


def _antonyms(rng: random.Random) -> list[dict]:
    all_answers = [antonym for _, antonym in ANTONYMS]
    docs = []
    for word, antonym in ANTONYMS:
        choices, label = _pick_choices(rng, antonym, all_answers)
        docs.append({"word": word, "choices": choices, "label": label})
    return docs


def _sums(rng: random.Random) -> list[dict]:
    docs = []
    for a in range(10):
        for b in range(10):
            total = a + b
            nearby = [str(n) for n in range(max(0, total - 4), total + 5)]
            choices, label = _pick_choices(rng, str(total), nearby)
            docs.append({"a": a, "b": b, "choices": choices, "label": label})
    return docs


def _plurals(rng: random.Random) -> list[dict]:
    docs = []
    for word, plural in PLURALS:
        # wrong forms of the same word, topped up with other words' plurals where the word has too few
        pool = set(_plural_forms(word)) - {plural, word}
        others = sorted({p for _, p in PLURALS} - {plural} - pool)
        while len(pool) < NUM_CHOICES - 1:
            pool.add(rng.choice(others))
        choices, label = _pick_choices(rng, plural, sorted(pool) + [plural])
        docs.append({"word": word, "choices": choices, "label": label})
    return docs


# name -> (document generator, doc_to_text template)
_DEMO_SPECS = {
    "demo_capitals": (_capitals, "The capital of {{country}} is"),
    "demo_antonyms": (_antonyms, "The opposite of {{word}} is"),
    "demo_sums": (_sums, "{{a}} + {{b}} ="),
    "demo_plurals": (_plurals, "The plural of {{word}} is"),
}
DEMO_TASKS: tuple[str, ...] = tuple(_DEMO_SPECS)


def demo_documents(name: str) -> dict[str, list[dict]]:
    """The `train` and `validation` documents of one demo task; each item lands in exactly one split."""
    generate, _ = _DEMO_SPECS[name]
    rng = random.Random(f"{DEMO_SEED}:{name}")
    docs = generate(rng)
    rng.shuffle(docs)
    half = len(docs) // 2
    return {"train": docs[:half], "validation": docs[half:]}


def _write_jsonl_atomic(path: Path, docs: list[dict]) -> None:
    content = "".join(json.dumps(doc, ensure_ascii=False, sort_keys=True) + "\n" for doc in docs).encode("utf-8")
    if path.is_file() and path.read_bytes() == content:
        return  # unchanged: keep the file (and its mtime, which datasets' cache key includes)
    cache.atomic_write_bytes(path, content)


def write_demo_data(name: str, data_dir: str | os.PathLike) -> dict[str, str]:
    """Writes DATA_DIR/<name>/{train,validation}.jsonl (atomically) and returns {split: absolute path}."""
    files = {}
    for split, docs in demo_documents(name).items():
        path = Path(data_dir).resolve() / name / f"{split}.jsonl"
        _write_jsonl_atomic(path, docs)
        files[split] = str(path)
    return files


def demo_task_config(name: str, data_dir: str | os.PathLike) -> dict:
    """An lm-eval task config dict for one demo task, its data written under data_dir."""
    _, doc_to_text = _DEMO_SPECS[name]
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": write_demo_data(name, data_dir)},
        "output_type": "multiple_choice",
        "training_split": "train",
        "validation_split": "validation",
        "test_split": None,
        "doc_to_text": doc_to_text,
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "target_delimiter": " ",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0, "demo_seed": DEMO_SEED},
    }

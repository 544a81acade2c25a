"""Four synthetic multiple-choice tasks that run offline through lm-eval, each with a few hundred held-out items.

Each task is generated deterministically from a fixed seed and split into a `train` split (calibration) and a disjoint
`validation` split (evaluation), written as JSONL and registered with lm-eval as an inline config dict. Facts are split,
not items: a country, word pair or sum lands in one split with all its phrasings. The prompts are plain sentence
starts ("The capital of France is" -> " Paris") that a ~270M-parameter LM completes zero-shot; several phrasings per
fact give several hundred validation items per task, so a 5-point difference of the four-task average is outside the
item noise. Evaluation cost: the answers are single tokens for Gemma-3's vocabulary where possible, and the choices of
a sum share their tens digit, so lm-eval's logits cache scores the four choices of most items in one forward pass.
"""

import json
import os
import random
import shlex
from pathlib import Path

from diet import cache

DEMO_SEED = 20261130
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


def _pick_choices(rng: random.Random, gold: str, pool: list[str]) -> tuple[list[str], int]:
    distractors = rng.sample(sorted(set(pool) - {gold}), NUM_CHOICES - 1)
    choices = [gold] + distractors
    rng.shuffle(choices)
    return choices, choices.index(gold)


CAPITAL_PROMPTS = ("The capital of {country} is", "The capital city of {country} is", "In {country}, the capital is")
ANTONYM_PROMPTS = ("The opposite of {word} is", "The antonym of {word} is")
PLURAL_PROMPTS = ("The plural of {word} is", "One {word}, two", "A single {word}, several")
SUM_TRAIN, SUM_VALIDATION = 60, 300
TRAIN_FACTS = 16  # capitals, antonym pairs and plural words in the train split; the rest is validation


def _split_facts(rng: random.Random, facts: list, n_train: int) -> dict[str, list]:
    facts = list(facts)
    rng.shuffle(facts)
    return {"train": facts[:n_train], "validation": facts[n_train:]}


# Answers that Gemma-3's tokenizer splits into several tokens: never a distractor, so that the four choices of an item
# are scored in one forward pass wherever the gold answer is a single token (lm-eval's logits cache).
MULTI_TOKEN = {"Addis Ababa", "Algiers", "Luanda", "New Delhi", "Phnom Penh", "Vientiane", "Kuala Lumpur",
               "Ulaanbaatar", "Sanaa", "Abu Dhabi", "Tashkent", "Brasilia", "Buenos Aires", "Bogota", "Asuncion",
               "Tirana", "Nicosia", "Managua", "Port-au-Prince", "Lusaka", "Maputo", "Antananarivo", "Mogadishu",
               "oases", "donkeys"}


def _capitals(rng: random.Random) -> dict[str, list[dict]]:
    all_capitals = [capital for _, capital in CAPITALS if capital not in MULTI_TOKEN]
    split = {}
    for name, facts in _split_facts(rng, CAPITALS, TRAIN_FACTS).items():
        split[name] = []
        for country, capital in facts:
            for template in CAPITAL_PROMPTS:
                choices, label = _pick_choices(rng, capital, all_capitals)
                split[name].append({"country": country, "prompt": template.format(country=country),
                                    "choices": choices, "label": label})
    return split


def _antonyms(rng: random.Random) -> dict[str, list[dict]]:
    """Both directions of each pair (cold -> hot and hot -> cold); distractors are words of the same side."""
    sides = ([word for word, _ in ANTONYMS], [antonym for _, antonym in ANTONYMS])
    split = {}
    for name, facts in _split_facts(rng, ANTONYMS, TRAIN_FACTS).items():
        split[name] = []
        for pair in facts:
            for side in (0, 1):
                word, gold = pair[side], pair[1 - side]
                for template in ANTONYM_PROMPTS:
                    choices, label = _pick_choices(rng, gold, sides[1 - side])
                    split[name].append({"word": word, "prompt": template.format(word=word), "choices": choices,
                                        "label": label})
    return split


def _sums(rng: random.Random) -> dict[str, list[dict]]:
    """A two-digit number plus a one-digit number; the distractors share the sum's tens digit (only the last digit
    tells them apart, and the four choices cost one forward pass)."""
    pairs = rng.sample([(a, b) for a in range(10, 60) for b in range(1, 10)], SUM_TRAIN + SUM_VALIDATION)
    split = {"train": pairs[:SUM_TRAIN], "validation": pairs[SUM_TRAIN:]}
    docs = {}
    for name, facts in split.items():
        docs[name] = []
        for a, b in facts:
            total = a + b
            same_tens = [str(total - total % 10 + d) for d in range(10)]
            choices, label = _pick_choices(rng, str(total), same_tens)
            docs[name].append({"a": a, "b": b, "prompt": f"{a} + {b} =", "choices": choices, "label": label})
    return docs


def _plurals(rng: random.Random) -> dict[str, list[dict]]:
    """Distractors are other words' plurals (single tokens): the model must pair the form with the word."""
    all_plurals = sorted({p for _, p in PLURALS} - MULTI_TOKEN)
    split = {}
    for name, facts in _split_facts(rng, PLURALS, TRAIN_FACTS).items():
        split[name] = []
        for word, plural in facts:
            for template in PLURAL_PROMPTS:
                choices, label = _pick_choices(rng, plural, all_plurals)
                split[name].append({"word": word, "prompt": template.format(word=word), "choices": choices,
                                    "label": label})
    return split


# name -> document generator ({"train": docs, "validation": docs}); every doc has a `prompt`
_DEMO_SPECS = {
    "demo_capitals": _capitals,
    "demo_antonyms": _antonyms,
    "demo_sums": _sums,
    "demo_plurals": _plurals,
}
DEMO_TASKS: tuple[str, ...] = tuple(_DEMO_SPECS)


def demo_documents(name: str) -> dict[str, list[dict]]:
    """The `train` and `validation` documents of one demo task; each fact lands in exactly one split."""
    rng = random.Random(f"{DEMO_SEED}:{name}")
    split = _DEMO_SPECS[name](rng)
    for docs in split.values():  # phrasings of one fact apart, so that eval.limit=N samples N items of many facts
        rng.shuffle(docs)
    return split


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
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": write_demo_data(name, data_dir)},
        "output_type": "multiple_choice",
        "training_split": "train",
        "validation_split": "validation",
        "test_split": None,
        "doc_to_text": "{{prompt}}",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "target_delimiter": " ",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 2.0, "demo_seed": DEMO_SEED},
    }


CLI_TAG = "diet_demo"  # `lm_eval --tasks diet_demo` evaluates all four


def write_task_configs(out_dir: str | os.PathLike) -> list[Path]:
    """Writes OUT_DIR/<task>.yaml for every demo task (the config diet evaluates with, plus the tag `diet_demo`) and its
    data under OUT_DIR/data/<task>/, so that lm-eval's own CLI finds the demo tasks:
    `lm_eval --include_path OUT_DIR --tasks demo_capitals ...` (or `--tasks diet_demo` for all four). The YAML names
    its data files by absolute path, so lm-eval can start anywhere; move the folder and write it again."""
    import yaml  # PyYAML comes with lm-eval; only this command needs it

    out = Path(out_dir).resolve()
    written = []
    for name in DEMO_TASKS:
        config = {**demo_task_config(name, out / "data"), "tag": CLI_TAG}
        path = out / f"{name}.yaml"
        cache.atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    """python -m diet.tasks --write-configs DIR"""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m diet.tasks",
        description="Write the demo tasks as lm-eval task configs (YAML plus their JSONL data), for lm-eval's CLI.")
    parser.add_argument("--write-configs", metavar="DIR", type=Path, required=True,
                        help="folder to write <task>.yaml and data/<task>/{train,validation}.jsonl into")
    args = parser.parse_args(argv)
    written = write_task_configs(args.write_configs)
    where = shlex.quote(str(args.write_configs.resolve()))
    print(f"wrote {len(written)} lm-eval task configs to {where}: {', '.join(p.name for p in written)} "
          f"(data in {where}/data)\n"
          f"evaluate a saved model with: lm_eval --model hf --model_args pretrained=PATH --include_path {where} "
          f"--tasks {CLI_TAG}   (or --tasks {','.join(DEMO_TASKS)})")

"""The 25 DreamBench prompt templates (DreamBooth, Ruiz et al. 2023), as data.

Source: google/dreambooth `dataset/prompts_and_classes.txt`. There each prompt reads
`'a {0} {1} in the jungle'.format(unique_token, class_token)`; a concept in elite is one
placeholder word, so here `{}` stands for the whole subject: `a {} in the jungle` becomes
`a <mycat> in the jungle` for generation and `a cat in the jungle` for CLIP-T when the class
word is known (see `runner.clip_t_text`).

Live subjects (the dataset's 9 dogs and cats) get the live-object list (accessories and
outfits); every other subject gets the object list (scenes and materials). The first ten and
the last five templates are shared by both lists.
"""

from __future__ import annotations

_SHARED_SCENES = (
    "a {} in the jungle",
    "a {} in the snow",
    "a {} on the beach",
    "a {} on a cobblestone street",
    "a {} on top of pink fabric",
    "a {} on top of a wooden floor",
    "a {} with a city in the background",
    "a {} with a mountain in the background",
    "a {} with a blue house in the background",
    "a {} on top of a purple rug in a forest",
)
_SHARED_PROPERTIES = (
    "a red {}",
    "a purple {}",
    "a shiny {}",
    "a wet {}",
    "a cube shaped {}",
)

OBJECT_PROMPTS: tuple[str, ...] = _SHARED_SCENES + (
    "a {} with a wheat field in the background",
    "a {} with a tree and autumn leaves in the background",
    "a {} with the Eiffel Tower in the background",
    "a {} floating on top of water",
    "a {} floating in an ocean of milk",
    "a {} on top of green grass with sunflowers around it",
    "a {} on top of a mirror",
    "a {} on top of the sidewalk in a crowded street",
    "a {} on top of a dirt road",
    "a {} on top of a white rug",
) + _SHARED_PROPERTIES

LIVE_OBJECT_PROMPTS: tuple[str, ...] = _SHARED_SCENES + (
    "a {} wearing a red hat",
    "a {} wearing a santa hat",
    "a {} wearing a rainbow scarf",
    "a {} wearing a black top hat and a monocle",
    "a {} in a chef outfit",
    "a {} in a firefighter outfit",
    "a {} in a police outfit",
    "a {} wearing pink glasses",
    "a {} wearing a yellow shirt",
    "a {} in a purple wizard outfit",
) + _SHARED_PROPERTIES

# DreamBench's live subjects are all dogs and cats; these other animal and person words get
# the outfit prompts too, because "a <x> wearing a santa hat" is what users mean for them.
LIVE_CLASS_WORDS = frozenset({
    "dog", "cat", "puppy", "kitten", "pet", "animal", "bird", "rabbit", "bunny", "hamster", "horse",
    "person", "man", "woman", "boy", "girl", "baby", "child",
})

# The 30 DreamBench subjects and their class words, so `--class-word` values can be checked
# against the dataset (and a library named after its folders needs no flags at all).
SUBJECT_CLASSES: dict[str, str] = {
    "backpack": "backpack", "backpack_dog": "backpack", "bear_plushie": "stuffed animal",
    "berry_bowl": "bowl", "can": "can", "candle": "candle", "cat": "cat", "cat2": "cat",
    "clock": "clock", "colorful_sneaker": "sneaker", "dog": "dog", "dog2": "dog", "dog3": "dog",
    "dog5": "dog", "dog6": "dog", "dog7": "dog", "dog8": "dog", "duck_toy": "toy",
    "fancy_boot": "boot", "grey_sloth_plushie": "stuffed animal", "monster_toy": "toy",
    "pink_sunglasses": "glasses", "poop_emoji": "toy", "rc_car": "toy", "red_cartoon": "cartoon",
    "robot_toy": "toy", "shiny_sneaker": "sneaker", "teapot": "teapot", "vase": "vase",
    "wolf_plushie": "stuffed animal",
}


def is_live(class_word: str | None) -> bool:
    return bool(class_word) and class_word.strip().lower() in LIVE_CLASS_WORDS


def dreambench_prompts(class_word: str | None) -> tuple[str, ...]:
    """The 25 templates for a subject of this class (object templates when the class is unknown)."""
    return LIVE_OBJECT_PROMPTS if is_live(class_word) else OBJECT_PROMPTS

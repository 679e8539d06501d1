"""The project's own demo data: realistic clothing reviews, deterministic by seed.

Rows follow the real data set's shape (taxonomy shares, age, rating and recommendation rates, missing
titles and texts). Titles and texts are composed from phrase templates whose tone follows the rating
only loosely — each sentence draws its own tone, and some templates are mixed ("love the colour, but...")
— so a text model learns the sentiment clearly above chance without a perfect score.
Drops are written in the exact published CSV layout, so they take the same path as real data.
"""

from __future__ import annotations

import csv
import io
import os
import random
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mlplatform.core.data.contract import DatasetContract, load_contract
from mlplatform.core.data.schema import normalised_dtypes

CLOTHING: DatasetContract = load_contract()
"""The layout these reviews follow: the packaged default contract (the published clothing CSV)."""
_DTYPES = normalised_dtypes(CLOTHING)
NORMALISED_COLUMNS: tuple[str, ...] = tuple(_DTYPES)

RATINGS: tuple[int, ...] = (1, 2, 3, 4, 5)
RATING_SHARES: tuple[float, ...] = (0.036, 0.068, 0.122, 0.216, 0.558)
"""The real data set's rating distribution."""

# Share of reviewers recommending the item, by rating (measured on the real data set).
_RECOMMEND_SHARE = {1: 0.02, 2: 0.06, 3: 0.42, 4: 0.97, 5: 0.998}

# Share of sentences written in a positive / neutral / negative tone, by rating. The overlap keeps the
# demo model honest: neutral (rating 3) is the hardest class, as in the real data.
_TONES = ("positive", "neutral", "negative")
_TONE_MIX = {
    1: (0.08, 0.20, 0.72),
    2: (0.14, 0.28, 0.58),
    3: (0.28, 0.44, 0.28),
    4: (0.62, 0.27, 0.11),
    5: (0.77, 0.16, 0.07),
}

_MISSING_TEXT_SHARE = 0.03
_MISSING_TITLE_SHARE_WITH_TEXT = 0.125  # about 15% of titles missing overall
_MISSING_TITLE_SHARE_WITHOUT_TEXT = 0.9  # a rating-only review rarely has a title
_MISSING_TAXONOMY_SHARE = 0.001
_ZERO_FEEDBACK_SHARE = 0.47
_MEAN_NONZERO_FEEDBACK = 4.5
_AGE_MEAN, _AGE_SD, _AGE_MIN, _AGE_MAX = 43.0, 12.0, 18, 85
_CLOTHING_ID_SPACE = 1206
_SENTENCES_PER_REVIEW = (2, 5)

# (division, department, class, rows in the real data set): the taxonomy and its shares.
_TAXONOMY: tuple[tuple[str, str, str, int], ...] = (
    ("General", "Dresses", "Dresses", 3203),
    ("General", "Tops", "Knits", 2772),
    ("General Petite", "Dresses", "Dresses", 2193),
    ("General", "Tops", "Blouses", 1697),
    ("General Petite", "Tops", "Knits", 1347),
    ("General Petite", "Tops", "Blouses", 929),
    ("General", "Tops", "Sweaters", 769),
    ("General", "Bottoms", "Pants", 714),
    ("General", "Bottoms", "Jeans", 665),
    ("General", "Tops", "Fine gauge", 583),
    ("General", "Bottoms", "Skirts", 508),
    ("General Petite", "Bottoms", "Pants", 464),
    ("General Petite", "Tops", "Sweaters", 428),
    ("Initmates", "Intimate", "Lounge", 389),
    ("General Petite", "Tops", "Fine gauge", 360),
    ("General", "Jackets", "Jackets", 332),
    ("General Petite", "Bottoms", "Jeans", 311),
    ("Initmates", "Intimate", "Swim", 299),
    ("General Petite", "Bottoms", "Skirts", 293),
    ("General", "Bottoms", "Shorts", 271),
    ("General Petite", "Jackets", "Jackets", 269),
    ("General", "Jackets", "Outerwear", 205),
    ("Initmates", "Intimate", "Sleep", 199),
    ("General Petite", "Intimate", "Lounge", 198),
    ("Initmates", "Intimate", "Legwear", 140),
    ("Initmates", "Intimate", "Intimates", 135),
    ("Initmates", "Intimate", "Layering", 129),
    ("General", "Trend", "Trend", 82),
    ("General Petite", "Jackets", "Outerwear", 66),
    ("General Petite", "Trend", "Trend", 20),
)

# What a reviewer calls an item of each class: (noun, is_plural).
_ITEM_NOUNS: dict[str, tuple[tuple[str, bool], ...]] = {
    "Dresses": (("dress", False), ("maxi dress", False), ("shift dress", False)),
    "Knits": (("top", False), ("tee", False), ("tunic", False)),
    "Blouses": (("blouse", False), ("shirt", False), ("button-down", False)),
    "Sweaters": (("sweater", False), ("pullover", False)),
    "Fine gauge": (("cardigan", False), ("sweater", False)),
    "Pants": (("pants", True), ("trousers", True), ("joggers", True)),
    "Jeans": (("jeans", True), ("skinny jeans", True)),
    "Skirts": (("skirt", False), ("midi skirt", False)),
    "Shorts": (("shorts", True),),
    "Lounge": (("lounge pants", True), ("hoodie", False)),
    "Swim": (("swimsuit", False), ("bikini top", False)),
    "Sleep": (("pajamas", True), ("nightgown", False)),
    "Legwear": (("leggings", True), ("tights", True)),
    "Intimates": (("bralette", False), ("bra", False)),
    "Layering": (("cami", False), ("tank", False)),
    "Jackets": (("jacket", False), ("blazer", False)),
    "Outerwear": (("coat", False), ("vest", False)),
    "Trend": (("jumpsuit", False), ("romper", False)),
}

# Grammar that follows the item: singular form, plural form.
_AGREEMENT = {
    "this": ("this", "these"),
    "it": ("it", "they"),
    "It": ("It", "They"),
    "them": ("it", "them"),
    "is": ("is", "are"),
    "was": ("was", "were"),
    "runs": ("runs", "run"),
    "fits": ("fits", "fit"),
    "looks": ("looks", "look"),
    "feels": ("feels", "feel"),
}

_COLORS = ("black", "navy", "ivory", "red", "olive", "blue", "pink", "grey", "green", "burgundy", "coral")
_SIZES = ("xs", "small", "medium", "large", "xl", "0", "2", "4", "6", "8", "10", "12", "petite small")
_PARTS = ("neckline", "waist", "sleeves", "hem", "buttons", "stitching", "straps", "zipper", "pockets")

_SENTENCES: dict[str, tuple[str, ...]] = {
    "positive": (
        "I love {this} {item}!",
        "{It} {fits} perfectly and the fabric is so soft.",
        "The color is gorgeous, even prettier in person.",
        "I ordered my usual {size} and {it} {fits} true to size.",
        "So comfortable, I could wear {them} every day.",
        "I get compliments every time I wear {them}.",
        "Great quality for the price.",
        "Highly recommend!",
        "The {color} is beautiful and very flattering.",
        "Love the details on the {part}.",
        "Perfect for work or a night out.",
        "I bought {them} in two colors, that's how much I love {them}.",
        "Not bad at all, I was pleasantly surprised.",
        "Wore {them} all weekend and {it} still {looks} new.",
        "The drape is lovely and {it} {is} easy to layer.",
    ),
    "neutral": (
        "I'm {height} and usually wear a {size}.",
        "I ordered the {size} in {color}.",
        "The fabric is a bit thinner than I expected.",
        "{It} {runs} a little large, so consider sizing down.",
        "{It} {is} okay, nothing special.",
        "The color is slightly different than the picture.",
        "I love the color, but the fit is a bit off.",
        "I might keep {them}, still deciding.",
        "It's cute, but I'm not sure it's worth full price.",
        "I will probably wait for a sale.",
        "The {part} is a little awkward but overall fine.",
        "Soft material, but {it} {is} wrinkled after one wear.",
        "Pretty {item}, though the sizing is inconsistent.",
        "{It} {looks} better on the model than on me.",
        "Comfortable enough for around the house.",
    ),
    "negative": (
        "Unfortunately {this} {item} did not work for me.",
        "The fabric {feels} cheap and scratchy.",
        "{It} {runs} very small, I could not even get {them} on.",
        "Very disappointed with the quality.",
        "The {part} was poorly made and came apart after one wash.",
        "{It} looked nothing like the picture online.",
        "{It} {was} huge and shapeless on me.",
        "Sadly going back.",
        "The {color} faded after the first wash.",
        "Not flattering at all, {it} made me look boxy.",
        "Way too expensive for what you get.",
        "I wanted to love {them} but I returned {them}.",
        "The sizing is way off, I would not order again.",
        "I'm {height} and the length was all wrong.",
        "Save your money.",
    ),
}

_TITLES: dict[str, tuple[str, ...]] = {
    "positive": (
        "Love {them}!",
        "Beautiful {item}",
        "Perfect {item}",
        "So comfortable",
        "Great buy",
        "Gorgeous",
        "My new favorite",
        "Flattering {item}",
    ),
    "neutral": (
        "Cute but runs large",
        "Nice but pricey",
        "Okay",
        "Almost",
        "Pretty, but...",
        "Mixed feelings",
        "Runs small",
        "Nice {item}",
    ),
    "negative": (
        "Disappointed",
        "Not for me",
        "Returned",
        "Poor quality",
        "Cheap fabric",
        "Huge",
        "Sadly returning",
        "Not as pictured",
    ),
}


@dataclass(frozen=True)
class _Item:
    noun: str
    plural: bool

    def words(self, rng: random.Random) -> dict[str, str]:
        """Every template placeholder, filled for this item."""
        inches = rng.randint(0, 10)
        words = {key: forms[int(self.plural)] for key, forms in _AGREEMENT.items()}
        words.update(
            item=self.noun,
            size=rng.choice(_SIZES),
            color=rng.choice(_COLORS),
            part=rng.choice(_PARTS),
            height=f"5'{inches}\" and {rng.randint(105, 190)} lbs",
        )
        return words


@dataclass(frozen=True)
class _Catalogue:
    """Clothing ids per class (disjoint pools) with Zipf-like popularity, and the taxonomy's weights."""

    pools: dict[str, list[int]]
    pool_weights: dict[str, list[float]]
    taxonomy_weights: list[float]

    @classmethod
    def build(cls, rng: random.Random) -> _Catalogue:
        class_rows: dict[str, int] = {}
        for _, _, class_name, rows in _TAXONOMY:
            class_rows[class_name] = class_rows.get(class_name, 0) + rows
        ids = list(range(_CLOTHING_ID_SPACE))
        rng.shuffle(ids)
        total = sum(class_rows.values())
        pools: dict[str, list[int]] = {}
        start = 0
        for class_name, rows in class_rows.items():
            # About half the id space is reviewed, as in the real data; pools sized by review share.
            size = max(3, rows * _CLOTHING_ID_SPACE // (2 * total))
            pools[class_name] = ids[start : start + size]
            start += size
        # A few items draw most reviews.
        weights = {name: [1.0 / (rank + 1) for rank in range(len(pool))] for name, pool in pools.items()}
        return cls(pools, weights, [float(entry[3]) for entry in _TAXONOMY])

    def clothing_id(self, rng: random.Random, class_name: str) -> int:
        return rng.choices(self.pools[class_name], weights=self.pool_weights[class_name])[0]


def _compose(
    rng: random.Random, pool: dict[str, tuple[str, ...]], rating: int, count: int, words: dict[str, str]
) -> str:
    """`count` distinct templates from `pool`, each in a tone drawn for `rating`, filled with `words`."""
    used: set[str] = set()
    parts: list[str] = []
    while len(parts) < count:
        tone = rng.choices(_TONES, weights=_TONE_MIX[rating])[0]
        template = rng.choice(pool[tone])
        if template in used:
            continue
        used.add(template)
        parts.append(template.format(**words))
    return " ".join(parts)


def _age(rng: random.Random) -> int:
    return min(_AGE_MAX, max(_AGE_MIN, round(rng.normalvariate(_AGE_MEAN, _AGE_SD))))


def _feedback_count(rng: random.Random) -> int:
    if rng.random() < _ZERO_FEEDBACK_SHARE:
        return 0
    return 1 + int(rng.expovariate(1.0 / (_MEAN_NONZERO_FEEDBACK - 1)))


def _review(rng: random.Random, catalogue: _Catalogue, source_row: int) -> dict[str, object]:
    rating = rng.choices(RATINGS, weights=RATING_SHARES)[0]
    division, department, class_name, _ = rng.choices(_TAXONOMY, weights=catalogue.taxonomy_weights)[0]
    # One size, colour, height per review, so its sentences agree with each other.
    words = _Item(*rng.choice(_ITEM_NOUNS[class_name])).words(rng)
    clothing_id = catalogue.clothing_id(rng, class_name)
    has_text = rng.random() >= _MISSING_TEXT_SHARE
    title_missing_share = _MISSING_TITLE_SHARE_WITH_TEXT if has_text else _MISSING_TITLE_SHARE_WITHOUT_TEXT
    has_title = rng.random() >= title_missing_share
    text = _compose(rng, _SENTENCES, rating, rng.randint(*_SENTENCES_PER_REVIEW), words) if has_text else None
    title = _compose(rng, _TITLES, rating, 1, words) if has_title else None
    taxonomy_known = rng.random() >= _MISSING_TAXONOMY_SHARE
    return {
        "source_row": source_row,
        "clothing_id": clothing_id,
        "age": _age(rng),
        "title": title,
        "review_text": text,
        "rating": rating,
        "recommended_ind": int(rng.random() < _RECOMMEND_SHARE[rating]),
        "positive_feedback_count": _feedback_count(rng),
        "division_name": division if taxonomy_known else None,
        "department_name": department if taxonomy_known else None,
        "class_name": class_name if taxonomy_known else None,
    }


def generate_reviews(n_rows: int, seed: int) -> pl.DataFrame:
    """`n_rows` realistic reviews in the normalised schema, source_row 0..n_rows-1; same seed, same rows."""
    if n_rows < 0:
        raise ValueError(f"n_rows must not be negative, got {n_rows}")
    rng = random.Random(seed)
    catalogue = _Catalogue.build(rng)
    rows = [_review(rng, catalogue, source_row) for source_row in range(n_rows)]
    return pl.DataFrame(rows, schema=_DTYPES, orient="row").select(NORMALISED_COLUMNS)


def to_published_csv(frame: pl.DataFrame) -> bytes:
    """The frame (normalised schema) as CSV in the exact published layout and quoting of the real file."""
    if set(frame.columns) != set(NORMALISED_COLUMNS):
        raise ValueError(
            f"to_published_csv needs exactly the normalised columns {list(NORMALISED_COLUMNS)}, got {frame.columns}"
        )
    buffer = io.StringIO()
    # The real file was written with minimal quoting and "\n" line ends; the csv module reproduces it
    # byte for byte (polars would quote the empty index header).
    writer = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(CLOTHING.source_names)
    writer.writerows(frame.select(NORMALISED_COLUMNS).iter_rows())
    return buffer.getvalue().encode("utf-8")


def write_demo_drops(dest_dir: Path, n_drops: int, rows_per_drop: int, seed: int) -> list[Path]:
    """Write `n_drops` published-layout CSV drops with distinct source_row ranges; returns their paths.

    Re-running with the same arguments finds identical files and keeps them; a different file under the
    same name is never overwritten.
    """
    if n_drops < 1 or rows_per_drop < 1:
        raise ValueError(f"need at least one drop of one row, got {n_drops} drops of {rows_per_drop} rows")
    dest_dir.mkdir(parents=True, exist_ok=True)
    reviews = generate_reviews(n_drops * rows_per_drop, seed)
    paths = []
    for index in range(n_drops):
        payload = to_published_csv(reviews.slice(index * rows_per_drop, rows_per_drop))
        path = dest_dir / f"demo-reviews-seed{seed}-{index + 1:03d}-of-{n_drops:03d}.csv"
        _write_once(path, payload)
        paths.append(path)
    return paths


def _write_once(path: Path, payload: bytes) -> None:
    if path.exists():
        if path.read_bytes() == payload:
            return
        raise FileExistsError(f"{path} exists with different content; refusing to overwrite it")
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(payload)
    os.replace(temporary, path)

"""Built-in, seeded Chinese e-commerce product-search data: what the demo trains on.

The project ships no third-party data, so this module writes its own: shopper queries
(``适合夏天穿的显瘦连衣裙``) with 1-3 positive product listings each, and a corpus of every
positive plus distractors. It is built to be *hard for lexical matching*:

* Queries state needs the way shoppers type them; positives state the matching product
  attributes the way shop listings do (夏天 → 雪纺/冰丝/透气/薄款, 保暖 → 加绒/羽绒/羊毛,
  送老人 → 中老年, 宝宝 → 婴儿, 防水 → 防泼水/户外冲锋 ...), so they share few characters.
* Distractors share words but not meaning: the same product with one need swapped
  (a 加绒 dress for a summer query) written with the query's own words, an accessory that
  names the product (连衣裙防尘挂袋), another product with the same need (夏天用的风扇), and
  a neighbouring product type with the same attributes (a 冰丝 T恤 for a summer dress).

Relevance is explicit, not incidental: a listing is relevant to a query exactly when it
is the query's product type and states every attribute the query asks for. The generator
checks every listing it writes against every query, so a positive is relevant to its own
query only and a distractor to none; a query's positives are never another query's
(a 9:1 split by query leaves no passage in both splits).

Everything is drawn from one ``random.Random(seed)`` and nothing iterates a ``set`` of
strings, so the same :class:`SampleDataConfig` writes byte-identical files.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from components.config_values import check_config
from components.jsonl_files import write_jsonl

logger = logging.getLogger(__name__)

ROWS_FILENAME = "rows.jsonl"
CORPUS_FILENAME = "corpus.jsonl"
PASSAGE_ID_FORMAT = "p{:06d}"

# --------------------------------------------------------------------------------------
# Configuration and results
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleDataConfig:
    """How much sample data to generate, and from which seed.

    Attributes:
        seed: seeds the single random generator; the same config gives byte-identical files.
        num_queries: number of queries (training rows). The vocabulary supports about
            2,000 distinct needs; asking for more raises ``ValueError``.
        distractors_per_query: mean number of distractor passages written per query
            (the integer part for every query, plus one more with the fractional part's
            probability). Other queries' positives are further, easier negatives.
        max_positives_per_query: each query gets between 1 and this many (at most 3)
            positive listings.
    """

    seed: int = 20260101
    num_queries: int = 1500
    distractors_per_query: float = 3.0
    max_positives_per_query: int = 3

    def __post_init__(self) -> None:
        check_config(self)
        if self.num_queries < 1:
            raise ValueError(f"num_queries must be at least 1, got {self.num_queries}")
        if not (0.0 <= self.distractors_per_query <= 20.0):
            raise ValueError(f"distractors_per_query must be in [0, 20], got {self.distractors_per_query}")
        if not (1 <= self.max_positives_per_query <= len(POSITIVE_COUNT_WEIGHTS)):
            raise ValueError(
                f"max_positives_per_query must be in [1, {len(POSITIVE_COUNT_WEIGHTS)}], "
                f"got {self.max_positives_per_query}"
            )


@dataclass(frozen=True)
class SampleDataFiles:
    """Where :func:`generate_sample_data` wrote its files.

    Attributes:
        rows: JSONL training rows ``{"query": str, "pos": [str, ...]}`` (no ``neg``).
        corpus: JSONL passages ``{"id": "p000123", "text": str}``: every positive and every
            distractor, each text once.
    """

    rows: Path
    corpus: Path


@dataclass(frozen=True)
class SampleQuery:
    """One generated query and the ground truth behind it.

    Attributes:
        text: the query as a shopper types it.
        positives: its relevant listings, each also a corpus text.
        category: the product category (服装, 厨房用品, ...).
        product_type: key into :data:`PRODUCT_TYPES`.
        attributes: keys into :data:`ATTRIBUTES` the query asks for.
        template: the query template it was written with.
    """

    text: str
    positives: tuple[str, ...]
    category: str
    product_type: str
    attributes: tuple[str, ...]
    template: str


@dataclass(frozen=True)
class SampleDistractor:
    """A corpus passage that is relevant to no query.

    Attributes:
        text: the listing.
        kind: one of :data:`DISTRACTOR_KINDS`.
        query_index: index of the query it was written against.
        product_type: what the listing sells.
    """

    text: str
    kind: str
    query_index: int
    product_type: str


@dataclass(frozen=True)
class SampleDataset:
    """The generated data in memory, before it is written.

    Attributes:
        queries: in row order.
        distractors: in generation order.
        corpus: ``(id, text)`` pairs in file order (positives and distractors shuffled
            together, so an id says nothing about relevance).
    """

    queries: tuple[SampleQuery, ...]
    distractors: tuple[SampleDistractor, ...]
    corpus: tuple[tuple[str, str], ...]


# --------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------

SEASON, AUDIENCE, STYLE, PRICE, FUNCTION = "season", "audience", "style", "price", "function"
# A listing states at most one value of each of these; functions may stack.
SINGLE_VALUED_DIMENSIONS = (SEASON, AUDIENCE, STYLE, PRICE)
MAX_FUNCTIONS_PER_PRODUCT = 2


@dataclass(frozen=True)
class Attribute:
    """A need a shopper can ask for and a listing can state.

    Attributes:
        dimension: season, audience, style, price or function.
        query_phrases: shopper wording; ``{verb}`` becomes the product type's verb
            (穿/盖/用...), so 夏天{verb} reads 夏天穿 for a dress and 夏天用 for a fan.
        listing_phrases: listing wording, used where a product type has no override.
        descriptions: selling-point sentences a listing may add.
    """

    dimension: str
    query_phrases: tuple[str, ...]
    listing_phrases: tuple[str, ...]
    descriptions: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProductType:
    """A kind of product, how shoppers name it and how listings describe it.

    Attributes:
        category: shop category; :data:`CATEGORY_FILLERS` holds its filler words.
        verb: what one does with it (穿/盖/用...), substituted into query phrases.
        query_names: what shoppers call it.
        listing_names: what listings call it (some shared with ``query_names``).
        attributes: keys of :data:`ATTRIBUTES` this product can carry.
        listing_overrides: attribute key → listing phrases for this product where the
            generic ones do not fit (a summer dress is 雪纺, a summer quilt is 空调被).
        near: product types close enough to be convincing near-miss distractors but
            clearly a different thing to buy.
        share: relative share of queries; apparel dominates real search traffic.
    """

    category: str
    verb: str
    query_names: tuple[str, ...]
    listing_names: tuple[str, ...]
    attributes: tuple[str, ...]
    listing_overrides: Mapping[str, tuple[str, ...]]
    near: tuple[str, ...] = ()
    share: float = 1.0


@dataclass(frozen=True)
class Accessory:
    """A product whose listing names another product as what it is for (连衣裙防尘挂袋).

    Attributes:
        product_type: the accessory's own key in :data:`PRODUCT_TYPES`.
        targets: product types it can name.
        templates: listing heads; ``{obj}`` becomes the query's own word for the target,
            so the accessory matches the query lexically while selling something else.
    """

    product_type: str
    targets: tuple[str, ...]
    templates: tuple[str, ...]


# The tables themselves are data: JSON files in sample_vocabulary/ beside this module
# (shipped as package data). Each file's "_about" says what it holds.
VOCABULARY_DIR = Path(__file__).with_name("sample_vocabulary")


def _table(name: str) -> dict:
    table = json.loads((VOCABULARY_DIR / f"{name}.json").read_text(encoding="utf-8"))
    table.pop("_about", None)
    return table


def _tuples(mapping: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    return {key: tuple(values) for key, values in mapping.items()}


ATTRIBUTES: dict[str, Attribute] = {
    key: Attribute(entry["dimension"], tuple(entry["query_phrases"]), tuple(entry["listing_phrases"]),
                   tuple(entry["descriptions"]))
    for key, entry in _table("attributes").items()
}
# Needs that make no sense together in one product (a 可爱 cup for 送老人, 学生 + 上班带饭).
INCOMPATIBLE_ATTRIBUTES: tuple[tuple[str, str], ...] = tuple(
    (first, second) for first, second in _table("incompatible_attributes")["pairs"])
# Swapping a need for its opposite gives the most misleading same-product distractor.
CONTRASTS: dict[str, tuple[str, ...]] = _tuples(_table("contrasts"))
PRODUCT_TYPES: dict[str, ProductType] = {
    key: ProductType(entry["category"], entry["verb"], tuple(entry["query_names"]), tuple(entry["listing_names"]),
                     tuple(entry["attributes"]), _tuples(entry["listing_overrides"]), tuple(entry["near"]),
                     entry["share"])
    for key, entry in _table("product_types").items()
}
ACCESSORIES: tuple[Accessory, ...] = tuple(
    Accessory(entry["product_type"], tuple(entry["targets"]), tuple(entry["templates"]))
    for entry in _table("accessories")["accessories"])
CATEGORY_FILLERS: dict[str, tuple[str, ...]] = _tuples(_table("category_fillers"))
CATEGORY_DESCRIPTIONS: dict[str, tuple[str, ...]] = _tuples(_table("category_descriptions"))
PROMOTIONS: tuple[str, ...] = tuple(_table("promotions")["promotions"])
QUERY_TEMPLATES: dict[int, tuple[str, ...]] = {int(size): tuple(templates)
                                               for size, templates in _table("query_templates").items()}

# How many needs a query states: mostly two, which is how shoppers refine.
INTENT_SIZE_WEIGHTS: dict[int, float] = {1: 0.1, 2: 0.6, 3: 0.3}
# Weights for 1, 2, 3 positives per query (truncated at max_positives_per_query).
POSITIVE_COUNT_WEIGHTS = (0.45, 0.35, 0.2)

WRONG_ATTRIBUTE, ACCESSORY, SHARED_NEED, NEAR_TYPE = "wrong_attribute", "accessory", "shared_need", "near_type"
DISTRACTOR_KINDS = (WRONG_ATTRIBUTE, ACCESSORY, SHARED_NEED, NEAR_TYPE)
DISTRACTOR_KIND_WEIGHTS = (0.35, 0.2, 0.2, 0.25)
SHARED_NEED_DIMENSIONS = (SEASON, AUDIENCE, STYLE)

# Probabilities that shape how lexical the data is; together they set the BM25 baseline.
# Measured on the default config: BM25 (character 1+2-grams) MRR@10 0.21 (0.21-0.25 over
# seeds), an untuned multilingual-e5-small 0.38.
POSITIVE_USES_QUERY_NAME = 0.6      # a positive calls the product what the query does
POSITIVE_USES_QUERY_PHRASE = 0.35   # ... or states a need in shopper wording
DISTRACTOR_USES_QUERY_NAME = 0.6    # misleading listings echo the query's words
DISTRACTOR_USES_QUERY_PHRASE = 0.6
EXTRA_ATTRIBUTE_PROBABILITY = 0.35  # a listing states a need nobody asked for
SECOND_PHRASE_PROBABILITY = 0.35    # listings stack synonyms (透气 薄款)
PROMOTION_PROBABILITY = 0.2
FILLER_PROBABILITY = 0.6
DESCRIPTION_PROBABILITY = 0.5

MAX_TRIES = 40  # renderings tried for a positive before giving up on a text not yet written

# --------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------

_INCOMPATIBLE = frozenset(frozenset(pair) for pair in INCOMPATIBLE_ATTRIBUTES)


@dataclass(frozen=True)
class _Intent:
    """What a query asks for, before its positives and distractors exist."""

    product_type: str
    attributes: tuple[str, ...]
    phrases: tuple[str, ...]  # the raw query phrase chosen per attribute ({verb} unfilled)
    name: str
    text: str
    template: str


@dataclass(frozen=True)
class _ListingPlan:
    """A listing to render: what it sells, what it states, and in whose words."""

    product_type: str
    attributes: tuple[str, ...]
    lexical: Mapping[str, str] = field(default_factory=dict)  # attribute -> query phrase
    name: str | None = None
    head: str | None = None


def _valid_combination(product_type: str, attributes: Sequence[str]) -> bool:
    """At most one value per single-valued dimension, a few functions, no clashes."""
    allowed = PRODUCT_TYPES[product_type].attributes
    if any(key not in allowed for key in attributes) or len(set(attributes)) != len(attributes):
        return False
    dimensions = Counter(ATTRIBUTES[key].dimension for key in attributes)
    if any(dimensions[d] > 1 for d in SINGLE_VALUED_DIMENSIONS) or dimensions[FUNCTION] > MAX_FUNCTIONS_PER_PRODUCT:
        return False
    return not any(frozenset((a, b)) in _INCOMPATIBLE
                   for i, a in enumerate(attributes) for b in attributes[i + 1:])


class _RelevanceIndex:
    """Which queries a listing satisfies: same product type, every asked-for need stated."""

    def __init__(self) -> None:
        self._by_type: dict[str, list[tuple[int, frozenset[str]]]] = {}

    def add(self, query_index: int, product_type: str, attributes: Sequence[str]) -> None:
        self._by_type.setdefault(product_type, []).append((query_index, frozenset(attributes)))

    def matches(self, product_type: str, attributes: Sequence[str]) -> list[int]:
        stated = frozenset(attributes)
        return [index for index, asked in self._by_type.get(product_type, ()) if asked <= stated]


def _fill_verb(phrase: str, product_type: str) -> str:
    return phrase.replace("{verb}", PRODUCT_TYPES[product_type].verb)


def _weighted_choice(rng: random.Random, options: Sequence, weights: Sequence[float]):
    return rng.choices(list(options), weights=list(weights), k=1)[0]


def _need_sets(rng: random.Random, product_type: str) -> list[tuple[str, ...]]:
    """Every need set a query about ``product_type`` may ask for, in the order to use them.

    The sets form an antichain (none contains another): otherwise the positives of
    ``夏天穿的显瘦连衣裙`` would also be relevant to ``夏天穿的连衣裙``. All valid sets of 1-3
    needs are put in a random order weighted by :data:`INTENT_SIZE_WEIGHTS` and kept
    greedily, so the first ones are a fair sample and the list is as long as the
    vocabulary allows.
    """
    attributes = PRODUCT_TYPES[product_type].attributes
    candidates = [combo for size in INTENT_SIZE_WEIGHTS for combo in itertools.combinations(attributes, size)
                  if _valid_combination(product_type, combo)]
    # Weighted random order (Efraimidis-Spirakis): larger key first.
    keys = [rng.random() ** (1.0 / INTENT_SIZE_WEIGHTS[len(combo)]) for combo in candidates]
    ordered = [combo for _, combo in sorted(zip(keys, candidates), key=lambda pair: -pair[0])]
    kept: list[frozenset[str]] = []
    result: list[tuple[str, ...]] = []
    for combo in ordered:
        candidate = frozenset(combo)
        if any(candidate <= other or other <= candidate for other in kept):
            continue
        kept.append(candidate)
        combo = list(combo)
        rng.shuffle(combo)  # the order the query will state them in
        result.append(tuple(combo))
    return result


def _write_query(rng: random.Random, product_type: str, attributes: tuple[str, ...],
                 seen_queries: set[str]) -> _Intent | None:
    """The query text for a need set, or None when every try repeats an earlier query."""
    spec = PRODUCT_TYPES[product_type]
    phrases = tuple(rng.choice(ATTRIBUTES[key].query_phrases) for key in attributes)
    slots = dict(zip("abc", (_fill_verb(p, product_type) for p in phrases)))
    for _ in range(5):
        name = rng.choice(spec.query_names)
        template = rng.choice(QUERY_TEMPLATES[len(attributes)])
        # Some phrases already end in 的 (好看的); templates add another before the noun.
        text = template.format(t=name, **slots).replace("的的", "的")
        if text not in seen_queries:
            return _Intent(product_type, attributes, phrases, name, text, template)
    return None


def _sample_intents(rng: random.Random, num_queries: int) -> list[_Intent]:
    """``num_queries`` intents spread over the product types by share, in random order."""
    plans = {key: _need_sets(rng, key) for key in PRODUCT_TYPES}
    capacity = sum(len(plan) for plan in plans.values())
    if num_queries > capacity:
        raise ValueError(f"num_queries={num_queries} is more than the built-in vocabulary supports ({capacity})")
    positions = dict.fromkeys(plans, 0)
    tie_break = {key: rng.random() for key in plans}
    seen: set[str] = set()
    intents: list[_Intent] = []
    # Stride scheduling: the next query goes to the open type furthest below its share,
    # so shares hold at any size and a used-up type hands its turns to the others.
    while len(intents) < num_queries:
        open_types = [key for key in plans if positions[key] < len(plans[key])]
        if not open_types:
            raise ValueError(f"num_queries={num_queries} is more than the built-in vocabulary supports "
                             f"({len(intents)} distinct queries)")
        product_type = min(open_types, key=lambda key: ((positions[key] + 1) / PRODUCT_TYPES[key].share,
                                                        tie_break[key]))
        attributes = plans[product_type][positions[product_type]]
        positions[product_type] += 1
        intent = _write_query(rng, product_type, attributes, seen)
        if intent is not None:
            seen.add(intent.text)
            intents.append(intent)
    rng.shuffle(intents)
    return intents


def _listing_phrases(product_type: str, attribute: str) -> tuple[str, ...]:
    overrides = PRODUCT_TYPES[product_type].listing_overrides
    return overrides.get(attribute) or ATTRIBUTES[attribute].listing_phrases


def _render_listing(rng: random.Random, plan: _ListingPlan) -> str:
    """A shop listing for ``plan.product_type`` stating ``plan.attributes``.

    ``plan.lexical`` maps an attribute to a shopper phrase (``{verb}`` unfilled) that states
    it in the query's words instead of listing words; ``plan.name`` is the product word
    (a random listing name when None); ``plan.head`` a ready-made title head (an
    accessory's ``连衣裙防尘挂袋``) that replaces the name.
    """
    product_type, lexical, head = plan.product_type, plan.lexical, plan.head
    spec = PRODUCT_TYPES[product_type]
    order = list(plan.attributes)
    rng.shuffle(order)
    need_tokens: list[str] = []
    audience_tokens: list[str] = []
    price_tokens: list[str] = []
    shopper_tokens: set[str] = set()
    for key in order:
        if key in lexical:
            tokens = [_fill_verb(lexical[key], product_type)]
            shopper_tokens.update(tokens)
        else:
            options = list(_listing_phrases(product_type, key))
            count = 2 if len(options) > 1 and rng.random() < SECOND_PHRASE_PROBABILITY else 1
            tokens = rng.sample(options, count)
        dimension = ATTRIBUTES[key].dimension
        # Audience and price words stand apart in titles (碎花裙 女, 9.9包邮), never glued.
        {AUDIENCE: audience_tokens, PRICE: price_tokens}.get(dimension, need_tokens).extend(tokens)

    noun = head or plan.name or rng.choice(spec.listing_names)
    # Listings glue one or two need words onto the product noun (雪纺碎花裙) and list the
    # rest after it; shopper phrases read better joined with 的 (夏天用的风扇).
    glued = need_tokens[:rng.randint(0, min(2, len(need_tokens)))] if head is None else []
    rest = need_tokens[len(glued):]
    joiner = "的" if glued and glued[-1] in shopper_tokens and not glued[-1].endswith("的") else ""
    title_head = "".join(glued) + joiner + noun
    parts = [title_head]
    if audience_tokens:
        if rng.random() < 0.5:
            parts.insert(0, audience_tokens[0])
        else:
            parts.append(audience_tokens[0])
        parts.extend(audience_tokens[1:])
    parts.extend(rest)
    parts.extend(price_tokens)
    if rng.random() < FILLER_PROBABILITY:
        parts.append(rng.choice(CATEGORY_FILLERS[spec.category]))
    title = " ".join(parts)
    if rng.random() < PROMOTION_PROBABILITY:
        title = f"【{rng.choice(PROMOTIONS)}】{title}"

    if rng.random() < DESCRIPTION_PROBABILITY:
        sentences = [s for key in order if key not in lexical for s in ATTRIBUTES[key].descriptions]
        pool = sentences or list(CATEGORY_DESCRIPTIONS[spec.category])
        title = f"{title} {rng.choice(pool)}。"
    return title


def _extras(rng: random.Random, product_type: str, base: Sequence[str]) -> list[str]:
    """Unasked-for needs a listing also states, drawn per free dimension."""
    result = list(base)
    candidates = [k for k in PRODUCT_TYPES[product_type].attributes if k not in result]
    rng.shuffle(candidates)
    for key in candidates:
        if rng.random() < EXTRA_ATTRIBUTE_PROBABILITY and _valid_combination(product_type, result + [key]):
            result.append(key)
    return result


class _Corpus:
    """Texts written so far; every text appears once."""

    def __init__(self) -> None:
        self.texts: set[str] = set()

    def claim(self, text: str) -> bool:
        if text in self.texts:
            return False
        self.texts.add(text)
        return True


def _make_positive(rng: random.Random, query_index: int, intent: _Intent, index: _RelevanceIndex,
                   corpus: _Corpus) -> str | None:
    """A new listing relevant to query ``query_index`` and no other, or None."""
    for _ in range(MAX_TRIES):
        attributes = _extras(rng, intent.product_type, intent.attributes)
        # Drop unasked-for needs until the listing answers this query only; the asked-for
        # set alone always does, since no query's set contains another's.
        while index.matches(intent.product_type, attributes) != [query_index]:
            attributes.pop()
        lexical = {key: rng.choice(ATTRIBUTES[key].query_phrases)
                   for key in intent.attributes if rng.random() < POSITIVE_USES_QUERY_PHRASE}
        name = intent.name if rng.random() < POSITIVE_USES_QUERY_NAME else None
        text = _render_listing(rng, _ListingPlan(intent.product_type, tuple(attributes), lexical, name))
        if corpus.claim(text):
            return text
    return None


def _echo(rng: random.Random, intent: _Intent, keys: Sequence[str]) -> dict[str, str]:
    """The query's own phrases for ``keys``, each kept with the echo probability."""
    phrase_of = dict(zip(intent.attributes, intent.phrases))
    return {key: phrase_of[key] for key in keys
            if key in phrase_of and ATTRIBUTES[key].dimension != PRICE
            and rng.random() < DISTRACTOR_USES_QUERY_PHRASE}


def _wrong_attribute(rng: random.Random, intent: _Intent, index: _RelevanceIndex) -> _ListingPlan | None:
    """Same product, one asked-for need swapped (preferably for its opposite)."""
    spec = PRODUCT_TYPES[intent.product_type]
    swaps = list(intent.attributes)
    rng.shuffle(swaps)
    for dropped in swaps:
        dimension = ATTRIBUTES[dropped].dimension
        same_dimension = [k for k in spec.attributes
                          if ATTRIBUTES[k].dimension == dimension and k not in intent.attributes]
        preferred = [k for k in CONTRASTS.get(dropped, ()) if k in same_dimension]
        options = preferred or same_dimension
        if not options:
            continue
        attributes = [k for k in intent.attributes if k != dropped] + [rng.choice(options)]
        if not _valid_combination(intent.product_type, attributes):
            continue
        attributes = [k for k in _extras(rng, intent.product_type, attributes) if k != dropped]
        if index.matches(intent.product_type, attributes):
            continue
        name = intent.name if rng.random() < DISTRACTOR_USES_QUERY_NAME else None
        return _ListingPlan(intent.product_type, tuple(attributes), _echo(rng, intent, attributes), name)
    return None


def _accessory(rng: random.Random, intent: _Intent, index: _RelevanceIndex) -> _ListingPlan | None:
    """An accessory whose listing names the queried product (连衣裙防尘挂袋)."""
    options = [a for a in ACCESSORIES if intent.product_type in a.targets]
    if not options:
        return None
    accessory = rng.choice(options)
    head = rng.choice(accessory.templates).format(obj=intent.name)
    attributes = _extras(rng, accessory.product_type, [])
    if index.matches(accessory.product_type, attributes):
        attributes = []
    return _ListingPlan(accessory.product_type, tuple(attributes), head=head)


def _shared_need(rng: random.Random, intent: _Intent, index: _RelevanceIndex) -> _ListingPlan | None:
    """A product of another category stating one asked-for need in the query's words."""
    category = PRODUCT_TYPES[intent.product_type].category
    # Price words (便宜, 性价比高) fit every product; echoing them would make one listing a
    # trap for hundreds of queries rather than a near miss for one.
    keys = [k for k in intent.attributes if ATTRIBUTES[k].dimension in SHARED_NEED_DIMENSIONS]
    rng.shuffle(keys)
    for key in keys:
        others = [t for t, spec in PRODUCT_TYPES.items() if spec.category != category and key in spec.attributes]
        if not others:
            continue
        other = rng.choice(others)
        attributes = _extras(rng, other, [key])
        if index.matches(other, attributes):
            attributes = [key]
            if index.matches(other, attributes):
                continue
        phrase_of = dict(zip(intent.attributes, intent.phrases))
        return _ListingPlan(other, tuple(attributes), {key: phrase_of[key]})
    return None


def _near_type(rng: random.Random, intent: _Intent, index: _RelevanceIndex) -> _ListingPlan | None:
    """A neighbouring product with the same needs, in listing words (冰丝T恤 for a 连衣裙)."""
    near = list(PRODUCT_TYPES[intent.product_type].near)
    rng.shuffle(near)
    near.sort(key=lambda t: -sum(k in PRODUCT_TYPES[t].attributes for k in intent.attributes))
    for other in near:
        shared = [k for k in intent.attributes if k in PRODUCT_TYPES[other].attributes]
        if not _valid_combination(other, shared):
            continue
        attributes = _extras(rng, other, shared)
        if index.matches(other, attributes):
            attributes = shared
            if index.matches(other, attributes):
                continue
        return _ListingPlan(other, tuple(attributes))
    return None


_DISTRACTOR_BUILDERS = {
    WRONG_ATTRIBUTE: _wrong_attribute,
    ACCESSORY: _accessory,
    SHARED_NEED: _shared_need,
    NEAR_TYPE: _near_type,
}


def _make_distractor(rng: random.Random, query_index: int, intent: _Intent, index: _RelevanceIndex,
                     corpus: _Corpus) -> SampleDistractor | None:
    first = _weighted_choice(rng, DISTRACTOR_KINDS, DISTRACTOR_KIND_WEIGHTS)
    # Fall back through the other kinds: not every product has an accessory or a swap.
    kinds = [first] + [k for k in DISTRACTOR_KINDS if k != first]
    for kind in kinds:
        for _ in range(3):
            plan = _DISTRACTOR_BUILDERS[kind](rng, intent, index)
            if plan is None:
                break
            text = _render_listing(rng, plan)
            if corpus.claim(text):
                return SampleDistractor(text, kind, query_index, plan.product_type)
    return None


def build_sample_data(config: SampleDataConfig = SampleDataConfig()) -> SampleDataset:
    """Generate the sample in memory (see the module docstring for how it is built).

    Raises:
        ValueError: when ``config.num_queries`` exceeds what the vocabulary supports.
    """
    rng = random.Random(config.seed)
    intents = _sample_intents(rng, config.num_queries)
    index = _RelevanceIndex()
    for query_index, intent in enumerate(intents):
        index.add(query_index, intent.product_type, intent.attributes)
    corpus = _Corpus()

    count_weights = POSITIVE_COUNT_WEIGHTS[:config.max_positives_per_query]
    queries: list[SampleQuery] = []
    for query_index, intent in enumerate(intents):
        wanted = _weighted_choice(rng, range(1, len(count_weights) + 1), count_weights)
        positives = []
        for _ in range(wanted):
            text = _make_positive(rng, query_index, intent, index, corpus)
            if text is not None:
                positives.append(text)
        if not positives:
            raise RuntimeError(f"could not write a unique positive for query {intent.text!r}")
        queries.append(SampleQuery(intent.text, tuple(positives), PRODUCT_TYPES[intent.product_type].category,
                                   intent.product_type, intent.attributes, intent.template))

    whole, fraction = divmod(config.distractors_per_query, 1.0)
    distractors: list[SampleDistractor] = []
    for query_index, intent in enumerate(intents):
        count = int(whole) + (1 if rng.random() < fraction else 0)
        for _ in range(count):
            distractor = _make_distractor(rng, query_index, intent, index, corpus)
            if distractor is not None:
                distractors.append(distractor)

    texts = [text for query in queries for text in query.positives] + [d.text for d in distractors]
    rng.shuffle(texts)
    passages = tuple((PASSAGE_ID_FORMAT.format(i), text) for i, text in enumerate(texts))
    return SampleDataset(tuple(queries), tuple(distractors), passages)


def generate_sample_data(output_dir: str | os.PathLike,
                         config: SampleDataConfig = SampleDataConfig()) -> SampleDataFiles:
    """Write the sample's training rows and corpus under ``output_dir``, atomically.

    Returns:
        The paths of ``rows.jsonl`` (``{"query", "pos"}``) and ``corpus.jsonl`` (``{"id", "text"}``).
    """
    dataset = build_sample_data(config)
    output_dir = Path(output_dir)
    files = SampleDataFiles(rows=output_dir / ROWS_FILENAME, corpus=output_dir / CORPUS_FILENAME)
    write_jsonl(files.rows, ({"query": q.text, "pos": list(q.positives)} for q in dataset.queries))
    write_jsonl(files.corpus, ({"id": pid, "text": text} for pid, text in dataset.corpus))
    kinds = Counter(d.kind for d in dataset.distractors)
    positives = sum(len(q.positives) for q in dataset.queries)
    logger.info(
        "sample data (seed %d): %d queries over %d categories, %d positives, %d distractors (%s), "
        "%d passages -> %s",
        config.seed, len(dataset.queries), len({q.category for q in dataset.queries}), positives,
        len(dataset.distractors), ", ".join(f"{k} {kinds[k]}" for k in DISTRACTOR_KINDS),
        len(dataset.corpus), output_dir,
    )
    return files

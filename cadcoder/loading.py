"""Loading a CadCoder checkpoint: one ``from_pretrained`` path with one clear error.

:func:`load_model` loads the model and its processor from a folder written by ``save_pretrained`` (the output
of ``train.py`` or ``train_rl.py``) or from a Hub id. When that fails, the error says what is wrong with the
name (no ``config.json``, no processor, a file, an invalid id, offline) and how to fix it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["load_model"]

#: What a model folder needs besides the weights, and the files that provide it.
_FOLDER_PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("processor_config.json", ("processor_config.json", "preprocessor_config.json")),
    ("tokenizer files (tokenizer.json)", ("tokenizer.json", "tokenizer_config.json", "vocab.json")),
)


def _folder_error(path: Path, detail: str) -> OSError:
    """Why a local folder does not load as a model, and how to fix it."""
    if not (path / "config.json").is_file():
        return FileNotFoundError(
            f"{path} is not a model folder: it has no config.json. Pass the output_dir of train.py (e.g. "
            "outputs/quickstart from `python train.py configs/quickstart.json`) or a folder written by "
            "model.save_pretrained."
        )
    missing = [part for part, files in _FOLDER_PARTS if not any((path / f).is_file() for f in files)]
    if missing:
        return FileNotFoundError(
            f"the model folder {path} has no processor ({' and '.join(missing)} missing). Save it next to the "
            f"weights with processor.save_pretrained('{path}') (train.py does this at the end of training), or "
            f"pass a complete checkpoint folder.{detail}"
        )
    return OSError(f"could not load the model folder {path}{detail}; pass a checkpoint folder written by train.py")


def _hub_error(name: str, detail: str) -> OSError:
    """Why a name that is not a local folder does not load from the Hub, and what to do instead."""
    import huggingface_hub
    from huggingface_hub import constants

    try:
        huggingface_hub.utils.validate_repo_id(name)
    except Exception as exc:  # noqa: BLE001 - HFValidationError
        return FileNotFoundError(
            f"model {name!r} is neither an existing folder nor a valid Hub id ({exc}); pass the folder written by "
            "train.py (e.g. outputs/quickstart) or an id like 'owner/name'"
        )
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    why = (
        "the Hub is switched off here (HF_HUB_OFFLINE=1), and the id is not in the local cache"
        if offline
        else "the id does not exist, is private or gated (log in with `hf auth login`), or the Hub is unreachable"
    )
    return OSError(
        f"could not load model {name!r}: it is not a local folder, and as a Hugging Face Hub id it failed: {why}. "
        "Pass a local model folder (e.g. outputs/quickstart from `python train.py configs/quickstart.json`), "
        f"or check the id and your connection.{detail}"
    )


def _load_error(name: str, cause: BaseException) -> OSError:
    """The one error of :func:`load_model`: what is wrong with ``name`` and how to fix it."""
    path = Path(name).expanduser()
    detail = f" ({type(cause).__name__}: {(str(cause).splitlines() or [''])[0][:200]})"
    if path.is_dir():
        return _folder_error(path, detail)
    if path.exists():
        return FileNotFoundError(f"{path} is a file; pass the model FOLDER that holds config.json and the weights")
    return _hub_error(name, detail)


def load_model(name_or_path: str | os.PathLike, device: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
    """Load a CadCoder model and its processor from a saved folder or a Hub id, ready for generation.

    One path: ``AutoProcessor`` / ``AutoModelForImageTextToText.from_pretrained(..., trust_remote_code=True)``.
    The installed model classes are registered first and take precedence, so no remote code is executed
    for a CadCoder checkpoint.

    Args:
        name_or_path: a folder written by ``save_pretrained`` (``train.py`` output) or a Hub repo id.
        device: torch device; default ``"cuda"`` when available, else ``"cpu"``.
        dtype: optional torch dtype for the weights.

    Returns:
        ``(model, processor)``, the model in eval mode on ``device``.

    Raises:
        FileNotFoundError: a folder without ``config.json`` or processor / tokenizer files, a file, or a
            name that is neither a folder nor a valid Hub id.
        OSError: a Hub id could not be loaded (offline, unknown, or private); the message says what to do.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import modeling_cadcoder  # noqa: F401  (registers the Auto classes of the installed modules)
    import processing_cadcoder  # noqa: F401

    name = str(name_or_path)
    source = str(Path(name).expanduser()) if Path(name).expanduser().exists() else name
    try:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
        model = AutoModelForImageTextToText.from_pretrained(
            source, trust_remote_code=True, **({"dtype": dtype} if dtype is not None else {})
        )
    except (OSError, ValueError) as exc:
        raise _load_error(name, exc) from exc
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor

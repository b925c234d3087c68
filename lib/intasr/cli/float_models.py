"""`intasr restore-bn` and `intasr import-hama`: the float `.nemo` models the others start from."""

from __future__ import annotations

from pathlib import Path

from .. import paths


def _audio_batches(audio: str, limit: int | None, batch_size: int) -> tuple[list, list]:
    """(utterances, length-sorted padded batches) of an audio folder or manifest, texts optional."""
    from ..data import length_sorted_batches, load_batch, load_dataset

    utts = load_dataset(audio, require_text=False, limit=limit)
    if not utts:
        raise ValueError(f"{audio}: no audio files found")
    return utts, [load_batch([utts[i] for i in idx]) for idx in length_sorted_batches(utts, batch_size)]


def _load_folded(path: Path) -> dict:
    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"{path}: folded weights not found")
    try:
        return dict(np.load(path))
    except Exception as e:
        raise ValueError(f"{path}: cannot read folded weights (.npz): {e}") from e


def cmd_restore_bn(args) -> int:
    import torch

    from ..models import ConvASR, config_for, save_model
    from ..models.restore_bn import restore_batchnorm
    from ..provenance import file_sha256

    torch.manual_seed(0)
    folded = _load_folded(Path(args.folded))
    utts, batches = _audio_batches(args.audio, args.limit, args.batch_size)
    model = ConvASR(config_for(args.arch))
    restore_batchnorm(model, folded, batches, progress=not args.quiet)
    out = save_model(model, args.out)
    print(f"restored {len(model.batchnorms())} BatchNorm layers from {len(utts)} utterances -> {out}")
    print(f"sha256 {file_sha256(out)}  {out}")  # byte-reproducible whatever the thread count (issue 12)
    return 0


def cmd_import_hama(args) -> int:
    import torch

    from ..models import save_model
    from ..models.hama import load_hama_model, restore_conformer_bn

    torch.manual_seed(0)
    model = load_hama_model(args.hama)
    note = "folded BatchNorm (identity form)"
    if args.restore_bn:
        utts, batches = _audio_batches(args.audio, args.limit, args.batch_size)
        restore_conformer_bn(model, batches, progress=not args.quiet)
        note = f"BatchNorm statistics restored from {len(utts)} utterances of {args.audio}"
    out = save_model(model, args.out)
    print(f"hama Conformer-CTC ({model.config['source'].get('file')}, {len(model.labels)} labels + blank, "
          f"{note}) -> {out}")
    return 0


def add_restore_bn(sub) -> None:
    r = sub.add_parser("restore-bn", help="restore BatchNorm layers into a BN-folded checkpoint")
    r.add_argument("--folded", default=str(paths.folded_weights()), help="folded weights (.npz)")
    r.add_argument("--audio", default=str(paths.librispeech("train-clean-100")),
                   help="training-split audio folder or manifest")
    r.add_argument("--arch", default="quartznet15x5")
    r.add_argument("--out", default=str(paths.restored_model()))
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--limit", type=int, default=None, help="use only the first N utterances")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_restore_bn)


def add_import_hama(sub) -> None:
    h = sub.add_parser("import-hama", help="the `hama` package's pretrained phoneme Conformer-CTC as a .nemo")
    h.add_argument("--out", required=True, help="output .nemo")
    h.add_argument("--hama", default=None, help="a .hama file (default: the installed package's asr_waveform.hama)")
    h.add_argument("--restore-bn", action="store_true",
                   help="measure the conv modules' BatchNorm statistics on --audio (function unchanged)")
    h.add_argument("--audio", default=str(paths.librispeech("train-clean-100")),
                   help="training-split audio folder or manifest for --restore-bn")
    h.add_argument("--batch-size", type=int, default=8)
    h.add_argument("--limit", type=int, default=None, help="use only the first N utterances")
    h.add_argument("--quiet", action="store_true")
    h.set_defaults(func=cmd_import_hama)

"""The command line end to end on real files: restore-bn -> NeMo restore_from, evaluate, bad input."""

import json
import shutil

import pytest
import torch

from intasr.cli import main
from intasr.data import read_librispeech
from intasr.models import load_model


@pytest.fixture(scope="module")
def restored_small(shared_dir, train_clean_dir, tmp_path_factory):
    folded = shared_dir / "assets" / "quartznet15x5_base_en_bnfolded.npz"
    if not folded.is_file():
        pytest.skip(f"{folded} missing")
    out = tmp_path_factory.mktemp("restore") / "qn15.nemo"
    assert main(["restore-bn", "--folded", str(folded), "--audio", str(train_clean_dir), "--limit", "2",
                 "--out", str(out), "--quiet"]) == 0
    return out


@pytest.mark.nemo
def test_restored_nemo_file_loads_in_nemo_with_same_logits(restored_small, real_audio_batch):
    from nemo.collections.asr.models import EncDecCTCModel

    ours = load_model(restored_small)
    nemo = EncDecCTCModel.restore_from(str(restored_small), map_location="cpu").eval()
    audio, lengths = real_audio_batch
    with torch.no_grad():
        logits, out_len = ours(audio, lengths)
        ref_logp, ref_len, _ = nemo(input_signal=audio, input_signal_length=lengths)
    assert torch.equal(out_len, ref_len)
    logp = ours.log_probs(logits)
    for b in range(audio.shape[0]):
        n = int(out_len[b])
        assert (logp[b, :n] - ref_logp[b, :n]).abs().max() < 1e-4
    sd = nemo.state_dict()
    bn = "encoder.encoder.5.mconv.7"
    assert torch.equal(sd[f"{bn}.running_var"], ours.state_dict()[f"{bn}.running_var"])


def test_evaluate_cli_writes_summary(restored_small, test_other_dir, tmp_path, capsys):
    out = tmp_path / "fp32.json"
    assert main(["evaluate", "--model", str(restored_small), "--data", str(test_other_dir), "--limit", "3",
                 "--quiet", "--json", str(out), "--transcripts"]) == 0
    summary = json.loads(out.read_text())
    for key in ("wer", "cer", "words", "word_errors", "utterances", "ci95", "seconds"):
        assert key in summary
    assert summary["utterances"] == 3 and summary["ci95"][0] <= summary["wer"] <= summary["ci95"][1]
    assert len(summary["transcripts"]) == 3
    assert "WER" in capsys.readouterr().out


def test_bad_inputs_fail_cleanly_and_write_nothing(restored_small, test_other_dir, tmp_path, capsys):
    # a LibriSpeech copy with one corrupt flac
    data = tmp_path / "ls"
    utts = read_librispeech(test_other_dir)[:2]
    chapter = data / "1" / "2"
    chapter.mkdir(parents=True)
    lines = []
    for i, u in enumerate(utts):
        shutil.copy(u.audio_path, chapter / f"1-2-{i:04d}.flac")
        lines.append(f"1-2-{i:04d} {u.text.upper()}")
    (chapter / "1-2.trans.txt").write_text("\n".join(lines) + "\n")
    (chapter / "1-2-0001.flac").write_bytes(b"fLaC" + bytes(range(200)))
    out = tmp_path / "never.json"
    assert main(["evaluate", "--model", str(restored_small), "--data", str(data), "--quiet",
                 "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1-2-0001.flac" in err and not out.exists()

    # a model path that is not a checkpoint
    junk = tmp_path / "junk.nemo"
    junk.write_bytes(b"not a tar")
    assert main(["evaluate", "--model", str(junk), "--data", str(test_other_dir), "--quiet"]) == 2
    assert "junk.nemo" in capsys.readouterr().err

    # missing folded weights for restore-bn: nothing written
    target = tmp_path / "x.nemo"
    assert main(["restore-bn", "--folded", str(tmp_path / "none.npz"), "--audio", str(data),
                 "--out", str(target), "--quiet"]) == 2
    assert "none.npz" in capsys.readouterr().err and not target.exists()


def test_unsupported_model_part_is_one_line_not_a_traceback(tmp_path, capsys):
    """A library NotImplementedError (here: bias correction asked of a Conformer is a ValueError,
    a Conformer part that is not integer yet a NotImplementedError) ends as one line, exit 2."""
    from intasr.cli import main as cli_main
    from intasr.models import save_model
    from intasr.models.conformer import ConformerCTC
    from intasr.models.configs import conformer_ctc_config

    cfg = conformer_ctc_config("small", n_layers=1, d_model=64, n_heads=2, subsampling="striding",
                               self_attention_model="abs_pos")
    src = save_model(ConformerCTC(cfg), tmp_path / "c.nemo")
    rc = cli_main(["quantize", "--model", str(src), "--calibration", "random", "--frames", "64",
                   "--batch-size", "1", "--out", str(tmp_path / "c.aqz")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1 and "not integer yet" in err


def test_help_of_every_subcommand_imports_no_torch():
    """`intasr --help` and each subcommand's `--help` parse without importing torch (issue 13)."""
    import subprocess
    import sys

    from intasr.cli import build_parser

    commands = sorted(build_parser()._subparsers._group_actions[0].choices)
    assert {"transcribe", "quantize", "evaluate", "synth", "export", "bench"} <= set(commands)
    code = ("import sys, contextlib, io\n"
            "from intasr.cli import build_parser\n"
            "for argv in [['--help']] + [[c, '--help'] for c in sys.argv[1:]]:\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "        try:\n"
            "            build_parser().parse_args(argv)\n"
            "        except SystemExit as e:\n"
            "            assert e.code == 0, argv\n"
            "    assert 'usage: intasr' in out.getvalue(), argv\n"
            "    assert 'torch' not in sys.modules, (argv, 'imported torch')\n"
            "print('ok', len(sys.argv) - 1)\n")
    proc = subprocess.run([sys.executable, "-c", code, *commands], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"ok {len(commands)}", proc.stderr
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "intasr.cli", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "usage: intasr" in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "intasr.paths" in imported and "torch" not in imported  # (cli/__main__.py runs as __main__)


def _subparsers():
    from intasr.cli import build_parser

    return build_parser()._subparsers._group_actions[0].choices


def test_every_subcommand_help_exits_zero_and_names_its_options(capsys):
    """Each registered subcommand answers --help (exit 0) with its own usage line and every option it takes."""
    from intasr.cli import SUBCOMMANDS, build_parser

    subparsers = _subparsers()
    assert len(subparsers) == len(SUBCOMMANDS)
    for name, sub in subparsers.items():
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([name, "--help"])
        out = capsys.readouterr().out
        assert exit_.value.code == 0 and out.startswith(f"usage: intasr {name}"), name
        for action in sub._actions:
            assert all(opt in out for opt in action.option_strings), (name, action.option_strings)


def _add_argument_sites(flag: str) -> list[str]:
    """Every `*.add_argument("<flag>", ...)` call in lib/intasr, as "path:line"."""
    import ast
    from pathlib import Path

    lib = Path(__file__).resolve().parents[1] / "lib" / "intasr"
    sites = []
    for path in sorted(lib.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "add_argument"
                    and any(isinstance(a, ast.Constant) and a.value == flag for a in node.args)):
                sites.append(f"{path.relative_to(lib)}:{node.lineno}")
    return sites


@pytest.mark.parametrize("flag", ["--model", "--data"])
def test_model_and_data_options_are_defined_once(flag):
    """--model and --data are written in one place (intasr.options), whichever commands take them."""
    sites = _add_argument_sites(flag)
    assert len(sites) == 1 and sites[0].startswith("options.py:"), sites
    takers = [name for name, sub in _subparsers().items() if any(flag in a.option_strings for a in sub._actions)]
    assert len(takers) >= 3, takers   # shared by several commands, from that one definition


def test_synthesis_defaults_come_from_the_one_record():
    """The synthesis options of the commands that synthesize (`synth`, `quantize`, `grid`: frames,
    Adam iterations, learning rate; `synth`'s batch size) default to options.SYNTH_DEFAULTS."""
    from intasr.options import SYNTH_DEFAULTS

    keys = {"frames": "frames", "iterations": "iterations", "lr": "lr", "batch_size": "batch_size"}
    seen = 0
    for name in ("synth", "quantize", "grid"):
        for action in _subparsers()[name]._actions:
            if action.dest in keys:
                assert action.default == SYNTH_DEFAULTS[keys[action.dest]], (name, action.dest)
                seen += 1
    synth = {a.dest: a.default for a in _subparsers()["synth"]._actions}
    assert synth["batch_size"] == SYNTH_DEFAULTS["batch_size"]
    assert seen == 12   # each of the three takes frames, iterations, lr and batch size


@pytest.mark.parametrize("flag", ["--batches", "--frames", "--iterations", "--lr"])
def test_synthesis_options_are_defined_once(flag):
    """The synthesis settings are one option group (options.add_synthesis_options) that `synth`,
    `quantize` and `grid` share; the grid's --synth-* spellings are aliases of the same options."""
    sites = [s for s in _add_argument_sites(flag) if not s.startswith("cli/deploy.py")]   # export's --frames: T
    assert len(sites) == 1 and sites[0].startswith("options.py:"), sites
    for name in ("synth", "quantize", "grid"):
        assert any(flag in a.option_strings for a in _subparsers()[name]._actions), (name, flag)
    grid = _subparsers()["grid"]
    args = grid.parse_args(["--synth-iterations", "7", "--synth-frames", "64", "--synth-batches", "2"])
    assert (args.iterations, args.frames, args.batches) == (7, 64, 2)

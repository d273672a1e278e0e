"""The whole voice-building chain through the CLI: a folder of recordings -> two weight files -> speech.

slice -> label (real tiny.en Whisper) -> check -> prepare -> train-sovits -> train-gpt -> export ->
synthesize with the exported pair. Tiny random "pretrained" models in the official formats stand in
for the real ones (no model hub here); every step is the code a user runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile

from agent.cli import main
from asr_helpers import tiny_en_dir
from test_voice_train_sovits import write_tiny_discriminator
from voice_helpers import (
    SENTENCES,
    TINY_BERT,
    TINY_HUBERT,
    require_espeak,
    speak_32k,
    write_tiny_gpt,
    write_tiny_sovits,
)


def recordings(folder: Path) -> list[Path]:
    """Two 'recording sessions' of three sentences each, separated by pauses, as a user would have."""
    folder.mkdir(parents=True)
    pause = np.zeros(int(0.8 * 32000), np.float32)
    paths = []
    for n, group in enumerate((SENTENCES[:3], SENTENCES[3:6])):
        parts = [pause]
        for text, voice, speed in group:
            parts += [speak_32k(text, voice, speed) * 0.8, pause]
        path = folder / f"session{n}.wav"
        soundfile.write(path, np.concatenate(parts), 32000, subtype="PCM_16")
        paths.append(path)
    return paths


def test_recordings_to_exported_voice_that_speaks(tmp_path, capsys):
    require_espeak()
    from tts.pipeline import TTSPipeline
    from tts.weights import detect_weights

    pretrained = tmp_path / "pretrained"
    gpt = write_tiny_gpt(pretrained / "s1.ckpt")
    sovits = write_tiny_sovits(pretrained / "s2G_v2.pth", "v2")
    disc = write_tiny_discriminator(pretrained / "s2D_v2.pth", "v2")
    clips, runs = tmp_path / "clips", tmp_path / "runs"
    listing = tmp_path / "aria.list"

    # min_length 1000 ms: every sentence becomes its own clip
    slice_args = ["voice", "slice", *map(str, recordings(tmp_path / "raw")), "-o", str(clips)]
    assert main([*slice_args, "--min-length", "1000"]) == 0
    assert len(list(clips.glob("*.wav"))) >= 4
    label_args = ["voice", "label", str(clips), "-o", str(listing), "--speaker", "aria"]
    assert main([*label_args, "--language", "en", "--model", str(tiny_en_dir())]) == 0
    lines = listing.read_text().splitlines()
    assert len(lines) >= 4 and all(line.split("|")[1:3] == ["aria", "EN"] for line in lines)
    assert "window" in listing.read_text().lower()  # real words from the real Whisper
    main(["voice", "check", str(listing)])  # a report; short espeak clips may be flagged, never a crash
    capsys.readouterr()

    common = ["--name", "aria", "--version", "v2", "--exp-dir", str(runs), "--device", "cpu"]
    prepare = ["voice", "prepare", str(listing), *common, "--sovits-pretrained", str(sovits)]
    assert main([*prepare, "--hubert", str(TINY_HUBERT), "--bert", str(TINY_BERT), "--skip-bad"]) == 0
    sovits_train = [
        "voice",
        "train-sovits",
        *common,
        "--pretrained-g",
        str(sovits),
        "--pretrained-d",
        str(disc),
    ]
    # --repeat-below 0: a few steps (the official repeat of small lists to 100 items makes 48 of them)
    assert main([*sovits_train, "--epochs", "1", "--batch-size", "2", "--repeat-below", "0"]) == 0
    assert (
        main(["voice", "train-gpt", *common, "--pretrained", str(gpt), "--epochs", "1", "--batch-size", "4"])
        == 0
    )
    exported = tmp_path / "exported"
    assert main(["voice", "export", *common, "-o", str(exported)]) == 0
    out = capsys.readouterr().out

    gpt_file = next(exported.glob("aria-e*.ckpt"))
    sovits_file = next(exported.glob("aria_e*_s*.pth"))
    assert str(gpt_file) in out and str(sovits_file) in out
    assert detect_weights(gpt_file).kind == "gpt" and detect_weights(sovits_file).kind == "sovits"

    pipeline = TTSPipeline.from_paths(gpt_file, sovits_file, TINY_BERT, TINY_HUBERT)
    reference = sorted(clips.glob("*.wav"))[1]
    text = next(line.split("|")[3] for line in lines if Path(line.split("|")[0]).name == reference.name)
    params = {"text": "Good morning, friends.", "text_lang": "en", "ref_audio_path": str(reference),
              "prompt_text": text, "prompt_lang": "en", "seed": 1}  # fmt: skip
    rate, audio = next(iter(pipeline.run(params)))
    assert rate == 32000 and len(audio) > 0

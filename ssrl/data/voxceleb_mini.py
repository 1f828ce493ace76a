"""A miniature VoxCeleb / MUSAN / RIRS_NOISES tree from the built-in synthesiser (test support).

Written in the corpora's on-disk layouts, so that `config/voxceleb.yaml` (with the scale-down
overlay `config/voxceleb-mini.yaml`) runs its whole DAG through the same preparation code a user
with the real corpora runs:

    <out>/voxceleb2/dev/aac/id00000/<video>/00001.m4a     VoxCeleb2 dev (AAC in .m4a)
    <out>/voxceleb2/test/aac/id0NNNN/<video>/00001.m4a    VoxCeleb2 test (dev set here)
    <out>/voxceleb1/wav/id1NNNN/<video>/00001.wav         VoxCeleb1 (test)
    <out>/voxceleb1/{veri_test2,list_test_all2,list_test_hard2}.txt   `1|0 enroll test`
    <out>/musan/{music,noise,speech}/<subset>/<name>.wav
    <out>/RIRS_NOISES/simulated_rirs/{small,medium,large}room/RoomNNN/RoomNNN-NNNNN.wav

Speakers come from the synthesiser's train / dev / test parts (disjoint voices), a session
becomes a video, an utterance keeps its audio (4-6 s, as VoxCeleb's are at least 4 s). The
trial lists are in the official format: E (`list_test_all2`) is the synthesiser's test list,
O (`veri_test2`) its trials among two thirds of the speakers, H (`list_test_hard2`) its
targets and the non-targets between speakers on the same side of the median pitch (as
VoxCeleb1-H pairs speakers of one gender and nationality). Not user data: no real recording
is involved.

    python -m ssrl.data.voxceleb_mini --out DIR [--speakers N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from ssrl.data.kaldi import read_kaldi_dir, read_trials
from ssrl.data.synth import CorpusSpec, generate_corpus
from ssrl.files import InputError, atomic_dir, write_json

#: Where each built-in part goes: (folder under out, speaker-id base, audio format).
LAYOUT = {"train": ("voxceleb2/dev/aac", 0, ".m4a"), "dev": ("voxceleb2/test/aac", 9000, ".m4a"),
          "test": ("voxceleb1/wav", 10270, ".wav")}
TRIAL_FILES = {"O": "veri_test2.txt", "E": "list_test_all2.txt", "H": "list_test_hard2.txt"}
MUSAN_SUBSETS = {"noise": "free-sound", "music": "fma", "speech": "librivox"}
ROOMS = ("smallroom", "mediumroom", "largeroom")


def video_id(session: str) -> str:
    """An 11-character YouTube-like id for a session, stable across runs."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    digest = hashlib.sha256(session.encode()).digest()
    return "".join(alphabet[b % 64] for b in digest[:11])


def encode_m4a(wav: Path, out: Path) -> None:
    """AAC in an .m4a container, by the pinned imageio-ffmpeg binary (as VoxCeleb2 ships)."""
    import imageio_ffmpeg

    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(wav),
           "-c:a", "aac", "-b:a", "64k", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise InputError(f"{out}: ffmpeg could not encode AAC ({done.stderr.strip()[-200:]})")


def _speaker_split(src: Path, dest: Path, base: int, suffix: str) -> dict[str, str]:
    """Copy one built-in part into `dest/idNNNNN/<video>/NNNNN<suffix>`; returns the
    built-in utterance id -> VoxCeleb utterance id (`idNNNNN/<video>/NNNNN.wav`)."""
    data = read_kaldi_dir(src, check_files=True)
    speakers = sorted(set(data.utt2spk.values()))
    spk_id = {s: f"id{base + i:05d}" for i, s in enumerate(speakers)}
    mapping: dict[str, str] = {}
    counter: dict[str, int] = {}
    for utt in sorted(data.wavs):
        spk = spk_id[data.utt2spk[utt]]
        video = video_id(f"{spk}/{data.utt2sess[utt]}")
        counter[spk] = counter.get(spk, 0) + 1
        name = f"{counter[spk]:05d}"
        target = dest / spk / video / f"{name}{suffix}"
        if suffix == ".m4a":
            encode_m4a(Path(data.wavs[utt]), target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(Path(data.wavs[utt]).read_bytes())
        mapping[utt] = f"{spk}/{video}/{name}.wav"
    return mapping


def _trial_lists(test: Path, mapping: dict[str, str], out: Path) -> dict[str, int]:
    """O, E and H in VoxCeleb's format (`1|0 enroll test`) from the built-in test trials."""
    trials = read_trials(test / "trials")
    data = read_kaldi_dir(test, check_files=False)
    pitch = {s: v["f0_median"] for s, v in json.loads((test / "speakers.json").read_text()).items()}
    median = float(np.median(list(pitch.values())))
    speakers = sorted(pitch)
    first = set(speakers[: 2 * len(speakers) // 3])  # O: a subset, as VoxCeleb1-O's 40 of 1,251
    rows = {name: [] for name in TRIAL_FILES}
    for a, b, label in zip(trials.enroll, trials.test, trials.labels):
        sa, sb = data.utt2spk[a], data.utt2spk[b]
        line = f"{int(label)} {mapping[a]} {mapping[b]}"
        rows["E"].append(line)
        if sa in first and sb in first:
            rows["O"].append(line)
        if label or (pitch[sa] > median) == (pitch[sb] > median):
            rows["H"].append(line)
    for name, file in TRIAL_FILES.items():
        (out / file).write_text("".join(f"{line}\n" for line in rows[name]))
    return {name: len(lines) for name, lines in rows.items()}


def _augmentation_sets(noise: Path, rir: Path, out: Path) -> dict[str, int]:
    """MUSAN's and RIRS_NOISES' trees from the built-in noise and RIR sets."""
    data = read_kaldi_dir(noise, check_files=True)
    counts: dict[str, int] = {}
    for utt in sorted(data.wavs):
        cat = data.utt2category[utt]
        index = counts[cat] = counts.get(cat, 0) + 1
        subset = MUSAN_SUBSETS[cat]
        target = out / "musan" / cat / subset / f"{cat}-{subset}-{index - 1:04d}.wav"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(data.wavs[utt]).read_bytes())
    rirs = read_kaldi_dir(rir, check_files=True)
    for i, utt in enumerate(sorted(rirs.wavs)):
        room = f"Room{i // len(ROOMS) + 1:03d}"
        target = (out / "RIRS_NOISES" / "simulated_rirs" / ROOMS[i % len(ROOMS)] / room
                  / f"{room}-{i + 1:05d}.wav")
        target.parent.mkdir(parents=True, exist_ok=True)
        audio, rate = sf.read(rirs.wavs[utt], dtype="int16")
        sf.write(target, audio, rate, subtype="PCM_16")
    return counts | {"rirs": len(rirs.wavs)}


def make_voxceleb_mini(out: str | Path, speakers: int = 8, utts_per_speaker: int = 6,
                       seed: int = 0) -> dict:
    """Write the miniature tree at `out` (built next to it and renamed into place); returns
    its summary (also `out/summary.json`)."""
    spec = CorpusSpec(train_speakers=speakers, train_utts_per_speaker=utts_per_speaker,
                      sessions_per_speaker=2, dev_speakers=3, dev_utts_per_speaker=4,
                      dev_domain=1, test_speakers=6,
                      test_utts_per_speaker=4, test_domain=2, session_voice_var=1.0,
                      voice_colour_db=6.0, min_dur=4.0, max_dur=6.0, noise_files=6,
                      rir_files=3, seed=seed)
    with tempfile.TemporaryDirectory(prefix="voxceleb-mini-") as tmp, atomic_dir(out) as dest:
        corpus = Path(tmp) / "corpus"
        generate_corpus(corpus, spec)
        summary: dict = {"spec": {"speakers": speakers, "utts_per_speaker": utts_per_speaker,
                                  "seed": seed}}
        for part, (folder, base, suffix) in LAYOUT.items():
            mapping = _speaker_split(corpus / part, dest / folder, base, suffix)
            summary[part] = {"folder": folder, "utterances": len(mapping)}
            if part == "test":
                summary["trials"] = _trial_lists(corpus / "test", mapping, dest / "voxceleb1")
        summary["augmentation"] = _augmentation_sets(corpus / "noise", corpus / "rir", dest)
        write_json(dest / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssrl.data.voxceleb_mini",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write (replaced if ssrl made it)")
    parser.add_argument("--speakers", type=int, default=8, help="VoxCeleb2-dev speakers")
    parser.add_argument("--utts-per-speaker", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        summary = make_voxceleb_mini(args.out, args.speakers, args.utts_per_speaker, args.seed)
    except InputError as err:
        print(f"voxceleb_mini: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

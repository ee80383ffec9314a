"""A folder's digest, read byte by byte against the stat memo, on phone-sized files:

    .venv/bin/python -m benchmarks.folder_digest [--files N] [--mb M] [--repeats R]

Every command that reads a photo folder (`run` and each worker, `report`, `evaluate`,
`export`) keys the decoded cache and the study's record by the folder's digest: every
file's name, class and bytes. Arms, on one folder of N files of M MB each (random bytes
named .jpg: the digest does not decode), the page cache warm in both (the first pass,
cold, is not timed):
- every byte: `folder_digest` without a memo, as before (every file read and hashed);
- stat memo: with the home's file-digests.json, the files unchanged since it was written
  (their stat the same: size, modification and change times, inode, device).
Both must give the same digest; the memo is checked to be read past for a changed file in
tests/data/test_images.py."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from asl_sweep.data.images import folder_digest, scan_folder
from benchmarks.common import median_time, write_result


def make_folder(root: Path, files: int, mb: float) -> int:
    for i in range(files):
        folder = root / "ABCDEFGHI"[i % 9]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"p{i % 30:02d}_{i}.jpg").write_bytes(os.urandom(int(mb * 2**20)))
    return sum(p.stat().st_size for p in root.rglob("*.jpg"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=600)
    parser.add_argument("--mb", type=float, default=3.0, help="size of each file (a phone "
                        "photo: 2-5 MB)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, memo = Path(tmp) / "photos", Path(tmp) / "cache" / "file-digests.json"
        memo.parent.mkdir()
        size = make_folder(root, args.files, args.mb)
        time.sleep(2.1)  # files changed in the last 2 s are never kept in the memo
        files, labels = scan_folder(root, "error")[:2]
        plain = folder_digest(root, files, labels, "error")  # the cold pass, untimed
        assert folder_digest(root, files, labels, "error", memo=memo) == plain  # writes it
        arms = []
        for arm, kwargs in (("every byte (no memo, as before)", {}),
                            ("stat memo, files unchanged", {"memo": memo})):
            seconds, runs = median_time(
                lambda kw=kwargs: folder_digest(root, files, labels, "error", **kw),
                args.repeats)
            assert folder_digest(root, files, labels, "error", **kwargs) == plain
            arms.append({"arm": arm, "seconds_median": round(seconds, 3),
                         "seconds_runs": [round(t, 3) for t in runs],
                         "GB_per_s": round(size / 2**30 / seconds, 1)})
    result = {"folder": f"{args.files} files of {args.mb} MB ({size / 2**30:.2f} GiB), "
                        "page cache warm", "arms": arms,
              "speedup": round(arms[0]["seconds_median"] / arms[1]["seconds_median"], 1)}
    print(write_result("folder_digest", result))
    for a in arms:
        print(f"{a['arm']}: {a['seconds_median']} s")


if __name__ == "__main__":
    main()

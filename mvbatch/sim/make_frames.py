"""Dev-time tool: regenerate `data/frames.json`, the H.264 frames every output is made of.

Run `python -m mvbatch.sim.make_frames` on a machine with ffmpeg (libx264). It
encodes two IDR frames of each solid colour at each aspect ratio and stores the
parameter sets (as an `avcC` record) and the two frames (length-prefixed, as they
sit in an MP4 `mdat`). The two frames differ only in `idr_pic_id`, so the writer
can alternate them and every pair of consecutive frames stays standard-conformant.

Nothing imports this module at run time; the simulator only reads the JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

COLOURS = (
    "1f77b4",
    "ff7f0e",
    "2ca02c",
    "d62728",
    "9467bd",
    "8c564b",
    "e377c2",
    "17becf",
)
# Aspect ratios the schemas offer, at a tiny size that still looks like a video.
SIZES = {"16:9": (320, 180), "9:16": (180, 320), "1:1": (240, 240)}
NAL_SEI, NAL_IDR, NAL_SPS, NAL_PPS = 6, 5, 7, 8

OUT = Path(__file__).with_name("data") / "frames.json"


def split_annexb(stream: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream, without start codes."""
    units: list[bytes] = []
    starts: list[int] = []
    i = 0
    while (i := stream.find(b"\x00\x00\x01", i)) != -1:
        starts.append(i + 3)
        i += 3
    for n, start in enumerate(starts):
        end = starts[n + 1] - 3 if n + 1 < len(starts) else len(stream)
        # A 4-byte start code leaves its leading zero on the previous unit.
        units.append(stream[start:end].rstrip(b"\x00"))
    return units


def avcc_record(sps: bytes, pps: bytes) -> bytes:
    """The AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.3.3.1)."""
    return (
        bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1])
        + len(sps).to_bytes(2, "big")
        + sps
        + b"\x01"
        + len(pps).to_bytes(2, "big")
        + pps
    )


def encode(colour: str, width: int, height: int, workdir: Path) -> dict[str, object]:
    out = workdir / f"{colour}-{width}x{height}.h264"
    subprocess.run(  # noqa: S603 - fixed argument list, dev-time only
        [  # noqa: S607 - ffmpeg from PATH is the point of this tool
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"color=c=0x{colour}:s={width}x{height}:r=1",
            "-frames:v",
            "2",
            "-c:v",
            "libx264",
            "-profile:v",
            "baseline",
            "-preset",
            "veryslow",
            "-tune",
            "stillimage",
            "-threads",
            "1",
            "-pix_fmt",
            "yuv420p",
            "-x264-params",
            "keyint=1:min-keyint=1:scenecut=0:bframes=0",
            "-f",
            "h264",
            str(out),
        ],
        check=True,
    )
    units = split_annexb(out.read_bytes())
    sps = next(u for u in units if u[0] & 0x1F == NAL_SPS)
    pps = next(u for u in units if u[0] & 0x1F == NAL_PPS)
    # One slice per frame (threads=1), so each IDR unit is a whole frame; the
    # encoder's SEI banner is dropped to keep the frames identical in size.
    idrs = [u for u in units if u[0] & 0x1F == NAL_IDR]
    if len(idrs) != 2:
        raise SystemExit(f"expected 2 IDR slices for {colour}, got {len(idrs)}")
    return {
        "colour": f"#{colour}",
        # Hex, not base64: plain to diff, and free of accidental words.
        "avcC": avcc_record(sps, pps).hex(),
        "frames": [(len(u).to_bytes(4, "big") + u).hex() for u in idrs],
    }


def main() -> None:
    if shutil.which("ffmpeg") is None:
        sys.exit("ffmpeg is needed to regenerate the frames (apt-get install -y ffmpeg)")
    with tempfile.TemporaryDirectory() as tmp:
        sets = {
            aspect: {
                "width": width,
                "height": height,
                "variants": [encode(c, width, height, Path(tmp)) for c in COLOURS],
            }
            for aspect, (width, height) in SIZES.items()
        }
    OUT.write_text(json.dumps({"version": 1, "codec": "avc1", "sets": sets}, indent=1) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

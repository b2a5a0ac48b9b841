"""The timeline of the approved takes, as editing software imports it: timeline.otio.

Owns: the OpenTimelineIO document (`timeline_text`): one video track, one
clip per exported file in the order given (the export passes shot order),
each clip's source range the whole video (its length read from its own MP4
header, in frames at `RATE`), its media reference the exported file, and
what mvbatch knows of the take in the clip's metadata (under "mvbatch").

Media references are absolute `file://` URLs. OTIO leaves the base of a
relative URL undefined, and the applications that import .otio files
(DaVinci Resolve, otioview, the Premiere and Avid bridges) resolve one
against their own working folder rather than the timeline's, so the clips
would come in offline. An absolute URL imports as it is; if the folder is
moved, editors relink by file name, which the export keeps unique.

No CMX 3600 EDL: since OpenTimelineIO 0.17 its adapter is a separate package
(otio-cmx3600-adapter), and an EDL is one more format to keep true; the
.otio file is what the applications above read.

Must not: copy or check files (`export.py` hands it verified ones), or
decide which takes belong on the timeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

RATE = 24  # frames per second: the MP4 header we read gives the length, not the frame rate


@dataclass(frozen=True, slots=True)
class Clip:
    """One exported file on the timeline."""

    name: str
    path: Path  # the exported file, absolute
    seconds: Decimal
    metadata: Mapping[str, Any]

    @property
    def frames(self) -> int:
        return max(1, round(self.seconds * RATE))


def timeline_text(name: str, clips: Sequence[Clip]) -> str:
    """The .otio JSON of `clips` end to end on one video track."""
    import opentimelineio as otio  # imported here: only `export` needs it

    timeline = otio.schema.Timeline(name=name)
    track = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
    timeline.tracks.append(track)
    for clip in clips:
        whole = otio.opentime.TimeRange(
            otio.opentime.RationalTime(0, RATE), otio.opentime.RationalTime(clip.frames, RATE)
        )
        reference = otio.schema.ExternalReference(
            target_url=clip.path.as_uri(), available_range=whole
        )
        reference.name = clip.path.name
        track.append(
            otio.schema.Clip(
                name=clip.name,
                media_reference=reference,
                source_range=whole,
                metadata={"mvbatch": dict(clip.metadata)},
            )
        )
    return str(otio.adapters.write_to_string(timeline, "otio_json")) + "\n"

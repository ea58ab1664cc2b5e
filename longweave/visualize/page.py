"""The self-contained HTML page both views share: inline CSS, SVG and a little vanilla JS.

Nothing is fetched when the page opens (no CDN, no fonts), so it works offline and can be
mailed or attached as one file. The data the script needs travels as inline JSON.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from longweave.errors import ConfigError, DocumentError, MissingDependency

__all__ = ["FORMATS", "check_output", "esc", "page", "standalone_svg", "write"]

FORMATS = {".html": "html", ".htm": "html", ".svg": "svg", ".png": "image", ".pdf": "image"}
"""Output suffixes and what each writes; PNG and PDF need matplotlib."""

CSS = """
:root{--hl:#e8590c;--node:#8fa9c9;--edge:#c6ccd4;--ink:#1f2933;--muted:#6b7785;--sel:#2b8a3e}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--ink)}
header{padding:10px 16px;border-bottom:1px solid #e3e6ea;display:flex;flex-wrap:wrap;gap:6px 18px;
 align-items:baseline}
h1{font-size:17px;margin:0}.sub{color:var(--muted);margin:0}
.tools{margin-left:auto;display:flex;gap:6px}
.tools input{padding:3px 6px;width:14em}.tools button{padding:3px 8px;cursor:pointer}
main{display:flex;height:calc(100vh - 52px)}.tree main{height:55vh;border-bottom:1px solid #e3e6ea}
.view{flex:1;min-width:0;position:relative;background:#fbfcfd}
.view svg{width:100%;height:100%;cursor:grab;user-select:none;display:block}
aside{width:min(420px,40vw);overflow:auto;border-left:1px solid #e3e6ea;padding:12px 14px}
aside h2{font-size:15px;margin:4px 0 8px;overflow-wrap:anywhere}
aside h3{font-size:13px;margin:10px 0 4px;color:var(--muted)}
aside ul{padding-left:18px;margin:4px 0}aside li{margin:2px 0}
.chip{display:inline-block;border:1px solid #d0d5db;border-radius:10px;padding:0 7px;margin:2px;
 cursor:pointer;background:#fff;font-size:12px;max-width:22em;overflow:hidden;
 text-overflow:ellipsis;white-space:nowrap;vertical-align:bottom}
.legend span{margin-right:10px;white-space:nowrap}.dot{display:inline-block;width:10px;height:10px;
 border-radius:50%;vertical-align:middle;margin-right:4px}
.edge{stroke:var(--edge)}.edge.hl{stroke:var(--hl);stroke-opacity:.9}
.node circle{fill:var(--node);stroke:#fff;stroke-width:1.5;cursor:pointer}
.node text{font-size:13px;fill:var(--ink);pointer-events:none;paint-order:stroke;stroke:#fbfcfd;
 stroke-width:3px}
.node text.minor{display:none}.node:hover text.minor,.node.sel text.minor{display:block}
.node.hl circle{fill:var(--hl)}.node.start circle{stroke:var(--ink);stroke-width:3}
.node.end circle{stroke:var(--sel);stroke-width:4}
.node.sel circle{stroke:var(--sel);stroke-width:4}.node.match circle{fill:#f59f00}
.dim .node:not(.match){opacity:.25}.pathonly .node:not(.hl),.pathonly .edge:not(.hl){opacity:.1}
#lw-outline{padding:10px 16px}details.tnode{margin:2px 0 2px 16px}
details.tnode>summary{cursor:pointer;padding:1px 4px;border-radius:4px}
details.tnode.hl>summary{background:#fff0e6;border-left:3px solid var(--hl)}
details.tnode.end>summary{border-left:3px solid var(--sel)}
details.tnode.flash>summary{outline:2px solid var(--sel)}
.nid{font-weight:600;margin-right:4px}.meta{color:var(--muted);font-size:12px}
.prev{color:var(--muted)}.sum{margin:4px 0 6px 20px;white-space:pre-wrap}
.seg{margin:4px 0 6px 20px;color:var(--muted);font-size:12px;white-space:pre-wrap;
 border-left:2px solid #e3e6ea;padding-left:8px}
.mark{font-size:11px;color:#fff;background:var(--hl);border-radius:8px;padding:0 6px;
 margin-left:4px}
.mark.end{background:var(--sel)}
"""

# Pan (drag) and zoom (wheel) by moving the viewBox; every view gets them.
PAN_ZOOM = """
const svg=document.getElementById('lw-svg');const vb=svg.viewBox.baseVal;
function toSvg(e){const r=svg.getBoundingClientRect();if(!r.width||!r.height)return{x:vb.x,y:vb.y};
 const s=Math.max(vb.width/r.width,
 vb.height/r.height);return{x:vb.x+(e.clientX-r.left-(r.width-vb.width/s)/2)*s,
 y:vb.y+(e.clientY-r.top-(r.height-vb.height/s)/2)*s}}
svg.addEventListener('wheel',e=>{e.preventDefault();const k=e.deltaY>0?1.15:1/1.15;
 const p=toSvg(e);vb.x=p.x-(p.x-vb.x)*k;vb.y=p.y-(p.y-vb.y)*k;vb.width*=k;vb.height*=k},
 {passive:false});
let drag=null;
svg.addEventListener('pointerdown',e=>{if(e.target.closest('.node'))return;
 drag={x:e.clientX,y:e.clientY,vx:vb.x,vy:vb.y};svg.setPointerCapture(e.pointerId)});
svg.addEventListener('pointermove',e=>{const r=svg.getBoundingClientRect();
 if(!drag||!r.width)return;
 const s=Math.max(vb.width/r.width,vb.height/r.height);vb.x=drag.vx-(e.clientX-drag.x)*s;
 vb.y=drag.vy-(e.clientY-drag.y)*s});
svg.addEventListener('pointerup',()=>{drag=null});
const data=JSON.parse(document.getElementById('lw-data').textContent);
function el(tag,text,cls){const n=document.createElement(tag);
 if(text!==undefined)n.textContent=text;
 if(cls)n.className=cls;return n}
"""


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
"""Characters XML 1.0 forbids: one (a PDF's form feed, say) makes a whole .svg unreadable."""


def esc(text: object) -> str:
    """Text escaped for HTML and SVG content and attribute values; the control characters XML
    forbids become spaces, so the same markup also makes a well-formed standalone SVG."""
    return html.escape(_NOT_XML.sub(" ", str(text)), quote=True)


def _json(data: Any) -> str:
    # Inside <script>, only "</script" could end the element early: escape every "<" (and
    # ">" and "&" for good measure); JSON.parse reads the \\u escapes back.
    raw = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return raw.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page(*, kind: str, title: str, subtitle: str, tools: str, view: str, aside: str, data: Any,
         script: str, below: str = "") -> str:
    """One HTML document: header, the SVG view beside an info panel, then `below`."""
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<meta name=\"generator\" content=\"longweave\"><title>{esc(title)}</title>"
        f"<style>{CSS}</style></head>\n<body class=\"{esc(kind)}\">\n"
        f"<header><h1>{esc(title)}</h1><p class=\"sub\">{esc(subtitle)}</p>"
        f"<div class=\"tools\">{tools}</div></header>\n"
        f"<main><section class=\"view\">{view}</section>\n<aside id=\"lw-info\">{aside}</aside>"
        f"</main>\n{below}\n"
        f"<script type=\"application/json\" id=\"lw-data\">{_json(data)}</script>\n"
        f"<script>\n(()=>{{{PAN_ZOOM}{script}}})();\n</script>\n</body></html>\n"
    )


def standalone_svg(svg: str) -> str:
    """An inline SVG as a file of its own: the namespace and the styles it needs, no script."""
    svg = svg.replace("<svg ", "<svg xmlns=\"http://www.w3.org/2000/svg\" ", 1)
    head, _, rest = svg.partition(">")
    return (f"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n{head}><style>{_plain_css()}</style>"
            f"{rest}\n")


def _plain_css() -> str:
    """The styles with their custom properties spelt out: many SVG viewers lack `var()`."""
    root = re.search(r":root\{([^}]*)\}", CSS)
    assert root is not None
    values = dict(re.findall(r"(--[\w-]+):([^;]+)", root.group(1)))
    return re.sub(r"var\((--[\w-]+)\)", lambda m: values[m.group(1)], CSS[root.end():])


def check_output(path: str | Path) -> str:
    """What the suffix of `path` writes (`FORMATS`), or the error writing it would end in: an
    unknown suffix, or PNG/PDF without matplotlib. Cheap: for a check before any model call."""
    target = Path(path)
    kind = FORMATS.get(target.suffix.lower())
    if kind is None:
        raise ConfigError(f"cannot write {target.name!r}: unknown output format",
                          hint=f"end the file name with one of: {', '.join(FORMATS)}")
    if kind == "image":
        import importlib.util

        try:
            found = importlib.util.find_spec("matplotlib") is not None
        except (ImportError, ValueError):  # a broken install, or one blocked in sys.modules
            found = False
        if not found:
            raise MissingDependency("matplotlib", "eval")
    return kind


def write(path: str | Path, *, html_text: str, svg: str,
          image: Callable[[Path], None]) -> Path:
    """Write the view in the format the suffix names; PNG/PDF go through `image(path)`.

    Missing folders are made and an existing file is replaced, whole: the view is written to a
    temporary file beside it, then renamed over it, so an interrupted write never leaves half a
    page. Where a rename would not do what a plain write does, the file is written in place
    instead (see `_replace`): a path is written exactly where `batch.check_writable` says it can
    be. A path that cannot be written (a file where a folder should be, a folder in the way,
    no permission) is a `DocumentError` naming it, which the CLI and chat's `/trace open`
    report as such, not as a crash.
    """
    target = Path(path).expanduser()
    kind = check_output(target)
    ours = [target]  # the names of the file being written: an error names `target` alone
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if kind == "html":
            _replace(target, lambda p: p.write_text(html_text, encoding="utf-8"), ours)
        elif kind == "svg":
            _replace(target, lambda p: p.write_text(standalone_svg(svg), encoding="utf-8"), ours)
        else:
            _replace(target, image, ours)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.filename and Path(exc.filename) not in ours:
            why += f": {exc.filename}"  # the folder in the way, say
        raise DocumentError(target, f"cannot be written ({why})",
                            hint="choose another output file") from None
    return target


def _replace(target: Path, fill: Callable[[Path], None], ours: list[Path]) -> None:
    """`fill` a new file in `target`'s folder, then rename it over `target`; the new file is
    removed when anything fails. Its name keeps the suffix (matplotlib picks the format by it).

    `target` is written in place, as a plain write would, when the rename would fail or undo
    what a plain write keeps: no new file can be made in the folder (no write permission on
    it, a name too long once made temporary), or the file has other hard links (they would keep
    the old page) or another owner or group (the new file would be ours). A file this process
    may not write to is refused, though the folder would allow a rename over it: as
    `check_writable` refuses it before any model call. The paths written are appended to `ours`.
    """
    real = Path(os.path.realpath(target))  # through a link: the link keeps naming the view
    ours.append(real)
    if real.exists():
        if not real.is_file():  # a folder (an error) or a device: no rename
            fill(real)
            return
        with real.open("ab"):  # PermissionError, naming `real`, for a read-only page
            pass
    new = real.with_name(f".{real.name}.{secrets.token_hex(4)}.tmp{real.suffix}")
    try:
        # Created as open() would create it (mode 0o666 less the umask), not private as mkstemp's.
        os.close(os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError:  # a plain write needs no right on the folder: an error now names `real`
        fill(real)
        return
    ours.append(new)
    try:
        if real.is_file():
            if _lost_by_a_rename(real, new):
                new.unlink()
                fill(real)
                return
            shutil.copymode(real, new)  # a page replaced keeps who may read it
        fill(new)
        os.replace(new, real)
    except BaseException:
        with contextlib.suppress(OSError):
            new.unlink()
        raise


def _lost_by_a_rename(real: Path, new: Path) -> bool:
    """Whether renaming `new` over `real` would lose what writing `real` in place keeps: its
    other hard links, its owner or its group (`new` has those a new file in the folder gets)."""
    old, made = real.stat(), new.stat()
    return old.st_nlink > 1 or (old.st_uid, old.st_gid) != (made.st_uid, made.st_gid)

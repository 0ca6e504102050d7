"""static.File: serves a file or a directory tree (twisted.web.static.File's shape).

`File(path)` resolves everything from its `path` attribute on every request, so changing
`site.resource.path` on a live object (the seed's `factory.resource.path = 'static'`)
takes effect on the next request. Children are made per request (`getChild`) and carry the
root's real path: a request can never leave the root. Segments `.`, `..` (also when sent
percent-encoded), segments with `/`, `\\` or NUL, and paths whose real path (symlinks
resolved) lies outside the root are answered 404.

Directories: `index.html` (or `indexNames`) when present, else an escaped HTML listing
(`listing=False` turns it off: 403). A directory requested without its trailing slash is
redirected (301) to it. Files: MIME type from the stdlib `mimetypes`, ETag and
Last-Modified with If-None-Match / If-Modified-Since (304), one `Range` (206, or 416 when
it cannot be met; several ranges get the whole file), small files in the same write as the
headers, larger ones by `Request.sendfile` (zero copy).
"""

from __future__ import annotations

import html
import mimetypes
import os
import stat
import time
from typing import Any
from urllib.parse import quote

from forkd.web.dates import http_date, parse_http_date
from forkd.web.resource import NOT_DONE_YET, ForbiddenResource, NoResource, Resource

SMALL_FILE = 64 * 1024  # bodies up to this size go out with the headers in one write
_BAD_SEGMENTS = (b".", b"..")
_content_types: dict[tuple[str, str], bytes] = {}
_http_dates: dict[int, bytes] = {}


def last_modified(mtime: float) -> bytes:
    """The HTTP date of a modification time, cached (files are served many times)."""
    second = int(mtime)
    date = _http_dates.get(second)
    if date is None:
        if len(_http_dates) > 4096:
            _http_dates.clear()
        date = _http_dates[second] = http_date(second)
    return date


def safe_segment(segment: bytes) -> bool:
    """Whether a decoded path segment names an entry of the directory and nothing else."""
    return not (segment in _BAD_SEGMENTS or b"/" in segment or b"\\" in segment or b"\0" in segment)


def within(path: str, root: str) -> bool:
    """Whether real path `path` is `root` or below it."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def parse_range(header: bytes, size: int) -> tuple[int, int] | None | bool:
    """One `bytes=` range as (start, end inclusive); None to ignore the header (not bytes,
    malformed, several ranges); False when it cannot be satisfied (416)."""
    unit, _, spec = header.partition(b"=")
    if unit.strip().lower() != b"bytes" or b"," in spec:
        return None
    first, dash, last = spec.strip().partition(b"-")
    if not dash:
        return None
    try:
        if not first:
            suffix = int(last)
            if suffix < 0 or not last.isdigit():
                return None
            if suffix == 0 or size == 0:
                return False
            return max(0, size - suffix), size - 1
        if not first.isdigit() or (last and not last.isdigit()):
            return None
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if last and end < start:  # `bytes=5-2` is invalid: ignored
        return None
    if start >= size:  # `bytes=10-` of 10 bytes (or any range of an empty file) is 416
        return False
    return start, min(end, size - 1)


class File(Resource):
    """A file, or a directory and everything under it."""

    indexNames = ["index.html"]
    defaultType = "application/octet-stream"
    listing = True
    # Set on the children made for one request (never on the File in the tree, so never
    # pickled): the top File's real path, this one's, and its stat.
    _root: str | None = None
    _real: str | None = None
    _stat: os.stat_result | None = None

    def __init__(
        self,
        path: str,
        defaultType: str = "application/octet-stream",
        indexNames: list[str] | None = None,
        listing: bool = True,
    ) -> None:
        super().__init__()
        self.path = path
        self.defaultType = defaultType
        self.indexNames = list(indexNames) if indexNames is not None else ["index.html"]
        self.listing = listing

    def __repr__(self) -> str:
        return f"<File {self.path!r}>"

    # -- traversal ------------------------------------------------------------------------
    def getChild(self, path: bytes, request: Any) -> Resource:
        if path == b"":
            return self
        if not safe_segment(path):
            return NoResource()
        name = os.fsdecode(path)
        root = self._root
        parent = self._real
        if root is None or parent is None:  # the top File: resolve its path now, each time
            root = parent = os.path.realpath(self.path)
        real = os.path.join(parent, name)
        try:
            st = os.lstat(real)
        except OSError:
            return NoResource()
        if stat.S_ISLNK(st.st_mode):
            # Only a symlink can lead elsewhere: resolve it and require the root around it.
            real = os.path.realpath(real)
            if not within(real, root):
                return NoResource()
            try:
                st = os.stat(real)
            except OSError:
                return NoResource()
        child = self.createSimilarFile(os.path.join(self.path, name))
        child._root = root
        child._real = real
        child._stat = st
        return child

    def createSimilarFile(self, path: str) -> File:
        """A File for a path below this one, with this one's settings."""
        child = type(self).__new__(type(self))
        child.__dict__.update(self.__dict__)
        child.children = {}
        child.path = path
        return child

    # -- rendering ------------------------------------------------------------------------
    def render_GET(self, request: Any) -> Any:
        real = self._real
        st = self._stat
        if real is None or st is None:
            real = os.path.realpath(self.path)
            try:
                st = os.stat(real)
            except OSError:
                return NoResource().render(request)
        root = self._root or real
        if stat.S_ISDIR(st.st_mode):
            return self._renderDirectory(request, real, root)
        if not stat.S_ISREG(st.st_mode):
            return NoResource().render(request)
        return self._renderFile(request, real)

    def _renderDirectory(self, request: Any, real: str, root: str) -> Any:
        if not request.path.endswith(b"/"):
            query = request.uri.partition(b"?")[2]
            # One leading slash: `//evil.example` + `/` would be a protocol-relative
            # Location, sending the browser to another host (an open redirect).
            location = b"/" + request.path.lstrip(b"/") + b"/"
            request.redirect(location + (b"?" + query if query else b""), 301)
            return b""
        for name in self.indexNames:
            index = os.path.realpath(os.path.join(real, name))
            if within(index, root) and os.path.isfile(index):
                return self._renderFile(request, index)
        if not self.listing:
            return ForbiddenResource("Directory listing is turned off.").render(request)
        return self._renderListing(request, real)

    def contentType(self, path: str) -> bytes:
        """The Content-Type for a file name (cached per extension: guessing is slow)."""
        extension = os.path.splitext(path)[1].lower()
        key = (extension, self.defaultType)
        ctype = _content_types.get(key)
        if ctype is None:
            guessed, encoding = mimetypes.guess_type("x" + extension, strict=False)
            text = "application/gzip" if encoding == "gzip" else guessed or self.defaultType
            if text.startswith("text/") and "charset" not in text:
                text += "; charset=utf-8"
            ctype = text.encode("latin-1")
            if len(_content_types) < 4096:
                _content_types[key] = ctype
        return ctype

    def _renderFile(self, request: Any, real: str) -> Any:
        try:
            fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
        except PermissionError:
            return ForbiddenResource().render(request)
        except OSError:
            return NoResource().render(request)
        try:
            st = os.fstat(fd)
            body = self._respondFile(request, real, fd, st)
        except BaseException:
            os.close(fd)
            raise
        if body is not NOT_DONE_YET:
            os.close(fd)
        return body

    def _respondFile(self, request: Any, real: str, fd: int, st: os.stat_result) -> Any:
        size = st.st_size
        etag = b'"%x-%x"' % (st.st_mtime_ns, size)
        request.setHeader(b"etag", etag)
        request.setHeader(b"last-modified", last_modified(st.st_mtime))
        request.setHeader(b"accept-ranges", b"bytes")
        if self._notModified(request, etag, st.st_mtime):
            request.setResponseCode(304)
            return b""
        request.setHeader(b"content-type", self.contentType(real))
        offset, count = 0, size
        ranged = request.getHeader(b"range")
        if ranged is not None and self._ifRange(request, etag, st.st_mtime):
            span = parse_range(ranged, size)
            if span is False:
                request.setResponseCode(416)
                request.setHeader(b"content-range", b"bytes */%d" % size)
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                return b"416 Range Not Satisfiable\n"
            if span:
                start, end = span  # type: ignore[misc]
                request.setResponseCode(206)
                request.setHeader(b"content-range", b"bytes %d-%d/%d" % (start, end, size))
                offset, count = start, end - start + 1
        request.setHeader(b"content-length", b"%d" % count)
        if request.method == b"HEAD":
            return b""
        if count <= SMALL_FILE:
            return os.pread(fd, count, offset)
        request.sendfile(os.fdopen(fd, "rb", buffering=0), offset, count)
        return NOT_DONE_YET

    @staticmethod
    def _notModified(request: Any, etag: bytes, mtime: float) -> bool:
        match = request.getHeader(b"if-none-match")
        if match is not None:
            tags = [t.strip().removeprefix(b"W/") for t in match.split(b",")]
            return b"*" in tags or etag in tags
        since = request.getHeader(b"if-modified-since")
        if since is not None:
            when = parse_http_date(since)
            # A date in the future is invalid (RFC 7232 3.3): honouring it would answer 304
            # for every change until then, to a client whose clock runs ahead.
            return when is not None and int(mtime) <= when <= time.time()
        return False

    @staticmethod
    def _ifRange(request: Any, etag: bytes, mtime: float) -> bool:
        condition: bytes | None = request.getHeader(b"if-range")
        if condition is None:
            return True
        if condition.startswith(b'"'):
            return condition == etag
        when = parse_http_date(condition)
        return when is not None and int(mtime) <= when

    def _renderListing(self, request: Any, real: str) -> bytes:
        try:
            names = sorted(os.listdir(real))
        except OSError:
            return ForbiddenResource().render(request)
        title = html.escape(request.path.decode("utf-8", "replace"), quote=True)
        rows = []
        for name in names:
            is_dir = os.path.isdir(os.path.join(real, name))
            # Names that are not UTF-8 come back from listdir with surrogates: shown with
            # U+FFFD, so the page stays valid UTF-8 (the link keeps the exact bytes).
            shown = os.fsencode(name).decode("utf-8", "replace") + ("/" if is_dir else "")
            link = quote(os.fsencode(name)) + ("/" if is_dir else "")
            rows.append(f'<li><a href="{html.escape(link)}">{html.escape(shown)}</a></li>')
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        page = (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            f"<title>Directory listing for {title}</title></head><body>"
            f"<h1>Directory listing for {title}</h1><ul>\n" + "\n".join(rows) + "\n</ul>"
            "</body></html>\n"
        )
        return page.encode("utf-8")

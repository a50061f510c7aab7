"""MediaWiki XML dumps (Wikipedia's ``pages-articles``): their articles, as readable plain text.

`iter_pages` streams a dump (``.xml``, or bzip2-compressed, told by its magic bytes) with
``iterparse``, matching tags whatever their XML namespace and freeing each page once read.
`is_article` keeps namespace-0 pages that are not redirects. `clean_wikitext` turns wikitext
into plain text by a small set of rules, applied in this order:

1. HTML comments go (an unterminated one runs to the end of the text).
2. Elements whose content is not prose go with it: ``<ref>…</ref>``, ``<ref …/>``, ``<math>``,
   ``<gallery>``, ``<timeline>``, ``<imagemap>``, ``<score>``, ``<graph>``.
3. Templates ``{{…}}`` and tables ``{| … |}`` (at line starts) go, nested in any mix; links
   become their text: ``[[a|b]]`` → b, ``[[a]]`` → a, ``[[a|]]`` → a without a trailing
   "(…)", ``[[:Category:a]]`` → Category:a; ``[[File:…]]``, ``[[Image:…]]``, ``[[Media:…]]``
   and ``[[Category:…]]`` go whole (captions and their links too), as do interlanguage links
   ``[[xx:…]]`` without a label. An opener never closed stays as literal text.
4. External links: ``[http://x label]`` → label, ``[http://x]`` → nothing; bare URLs stay.
5. Other HTML tags go and keep their inner text (``<br>`` becomes a newline); ``'''`` and
   ``''`` go; behaviour switches like ``__NOTOC__`` go.
6. HTML entities are unescaped (the XML parser has already decoded one level, so ``&amp;nbsp;``
   in the file is a no-break space here).
7. Line by line: a heading ``== H ==`` becomes H on its own line, list and indent markers
   (``*#:;``) and rules (``----``) go, lines are stripped and runs of spaces (left where
   templates were) become one; 3+ newlines become 2.

Every step is one left-to-right scan (regular expressions without nested quantifiers, and
a stack of open constructs at most `MAX_DEPTH` deep), so unbalanced markup costs linear time.
"""

from __future__ import annotations

import bz2
import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from seqlab.errors import DataError

CLEANER_VERSION = 1
MAX_DEPTH = 32
DROPPED_ELEMENTS = ("ref", "math", "gallery", "timeline", "imagemap", "score", "graph")
DROPPED_LINK_NAMESPACES = frozenset({"file", "image", "media", "category"})

_ELEMENT_OPEN = re.compile(rf"<({'|'.join(DROPPED_ELEMENTS)})(\s[^<>]*)?>", re.IGNORECASE)
_ELEMENT_CLOSE = {name: re.compile(rf"</{name}\s*>", re.IGNORECASE) for name in DROPPED_ELEMENTS}
# Tables open and close at line starts; "|}}" ends a template, not a table.
_STRUCTURE = re.compile(r"\{\{|\}\}|\[\[|\]\]|^[ \t]*\{\||^[ \t]*\|\}(?!\})", re.MULTILINE)
_OPENERS = {"{{": "template", "{|": "table", "[[": "link"}
_CLOSERS = {"}}": "template", "|}": "table", "]]": "link"}
_LANGUAGE_PREFIX = re.compile(r"[a-z]{2,3}(?:-[a-z]+)*")
_PIPE_TRICK = re.compile(r"\s*\([^()]*\)$")
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\[\]]*(?:[ \t]([^\[\]\n]*))?\]")
_LINE_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
_QUOTES = re.compile(r"'{2,}")
_BEHAVIOUR_SWITCH = re.compile(r"__[A-Z]+__")
_SPACES = re.compile(r"[ \t]{2,}")
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass
class Page:
    """One page of a dump: its title, namespace number, redirect flag and latest wikitext."""

    title: str
    namespace: int
    redirect: bool
    text: str


def is_article(page: Page) -> bool:
    """A page in the main namespace (0) that is not a redirect (by element or by text)."""
    return (
        page.namespace == 0
        and not page.redirect
        and not page.text.lstrip()[:9].lower().startswith("#redirect")
    )


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _open_dump(path: Path) -> IO[bytes]:
    with path.open("rb") as probe:
        compressed = probe.read(3) == b"BZh"
    return bz2.open(path, "rb") if compressed else path.open("rb")


def iter_pages(path: Path) -> Iterator[Page]:
    """The pages of the MediaWiki XML dump at `path`, in file order.

    A file that is not such a dump (another root element, broken XML or bzip2) raises
    DataError; a page without ``<ns>`` counts as namespace 0.
    """
    expected = f"a MediaWiki XML dump (<mediawiki> root, .xml or .xml.bz2) at {path}"
    root: ET.Element | None = None
    try:
        with _open_dump(path) as stream:
            for event, element in ET.iterparse(stream, events=("start", "end")):
                if root is None:
                    root = element
                    if _local(root.tag) != "mediawiki":
                        raise DataError(f"expected {expected}, found a <{_local(root.tag)}> root")
                if event == "end" and _local(element.tag) == "page":
                    yield _read_page(element)
                    root.clear()
    except ET.ParseError as err:
        raise DataError(f"expected {expected}, but it is not valid XML ({err})") from None
    except (OSError, EOFError) as err:
        raise DataError(f"expected {expected}, but it cannot be read ({err})") from None


def _read_page(page: ET.Element) -> Page:
    title, namespace, redirect, text = "", 0, False, ""
    for child in page:
        tag = _local(child.tag)
        if tag == "title":
            title = child.text or ""
        elif tag == "ns":
            namespace = int((child.text or "0").strip() or 0)
        elif tag == "redirect":
            redirect = True
        elif tag == "revision":  # the last revision of the page is its current text
            for part in child:
                if _local(part.tag) == "text":
                    text = part.text or ""
    return Page(title, namespace, redirect, text)


def clean_wikitext(text: str) -> str:
    """Readable plain text of wikitext by the rules in the module docstring."""
    text = _drop_comments(text)
    text = _drop_elements(text)
    text = _resolve_structures(text)
    text = _EXTERNAL_LINK.sub(lambda m: (m.group(1) or "").strip(), text)
    text = _LINE_BREAK.sub("\n", text)
    text = _TAG.sub("", text)
    text = _QUOTES.sub("", text)
    text = _BEHAVIOUR_SWITCH.sub("", text)
    text = html.unescape(text)
    lines = (_clean_line(line) for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _drop_comments(text: str) -> str:
    parts, pos = [], 0
    while (start := text.find("<!--", pos)) >= 0:
        parts.append(text[pos:start])
        end = text.find("-->", start + 4)
        pos = len(text) if end < 0 else end + 3
    parts.append(text[pos:])
    return "".join(parts)


def _drop_elements(text: str) -> str:
    parts, pos = [], 0
    unclosed: set[str] = set()  # names with no closing tag after the current position
    while match := _ELEMENT_OPEN.search(text, pos):
        parts.append(text[pos : match.start()])
        pos = match.end()
        name = match.group(1).lower()
        if (match.group(2) or "").rstrip().endswith("/") or name in unclosed:
            continue
        close = _ELEMENT_CLOSE[name].search(text, pos)
        if close is None:
            unclosed.add(name)  # drop the lone opening tag only
        else:
            pos = close.end()
    parts.append(text[pos:])
    return "".join(parts)


@dataclass
class _Frame:
    kind: str
    opener: str
    parts: list[str] = field(default_factory=list)


def _resolve_structures(text: str) -> str:
    root: list[str] = []
    stack: list[_Frame] = []

    def parts() -> list[str]:
        return stack[-1].parts if stack else root

    def collapse_top() -> None:  # an opener that never closed is literal text
        frame = stack.pop()
        parts().extend([frame.opener, *frame.parts])

    pos = 0
    for match in _STRUCTURE.finditer(text):
        parts().append(text[pos : match.start()])
        pos = match.end()
        token = match.group()
        symbol = token.strip()
        if symbol in _OPENERS:
            if len(stack) < MAX_DEPTH:
                stack.append(_Frame(_OPENERS[symbol], token))
            else:
                parts().append(token)
            continue
        kind = _CLOSERS[symbol]
        depth = next((i for i in range(len(stack) - 1, -1, -1) if stack[i].kind == kind), None)
        if depth is None:
            parts().append(token)
            continue
        while len(stack) > depth + 1:
            collapse_top()
        frame = stack.pop()
        if kind == "link":
            parts().append(_render_link("".join(frame.parts)))
    parts().append(text[pos:])
    while stack:
        collapse_top()
    return "".join(root)


def _render_link(inner: str) -> str:
    target, bar, label = inner.partition("|")
    target = target.strip()
    if target.startswith(":"):
        target = target[1:]
    elif ":" in target:
        prefix = target.partition(":")[0].strip().lower()
        if prefix in DROPPED_LINK_NAMESPACES or (not bar and _LANGUAGE_PREFIX.fullmatch(prefix)):
            return ""
    if not bar:
        return target
    return label.strip() or _PIPE_TRICK.sub("", target.rpartition(":")[2])


def _clean_line(line: str) -> str:
    line = line.strip()
    if len(line) >= 2 and line[0] == "=" and line[-1] == "=":
        level = min(len(line) - len(line.lstrip("=")), len(line) - len(line.rstrip("=")))
        return line[level:-level].strip() if len(line) > 2 * level else ""
    if line and set(line) == {"-"} and len(line) >= 4:
        return ""
    return _SPACES.sub(" ", line.lstrip("*#:;").strip())

"""The `wikipedia` corpus: MediaWiki XML dumps, their wikitext cleaned to plain text."""

import bz2
import hashlib
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest

from seqlab.cli import main
from seqlab.data import load_corpus
from seqlab.data.wikitext import clean_wikitext, is_article, iter_pages
from seqlab.errors import DataError
from tests.helpers import tiny_config, write_config

SPLITS = ("train", "validation", "test")
NAMESPACE = "http://www.mediawiki.org/xml/export-0.10/"

ARTICLE = """\
{{Infobox thing|name={{nowrap|Foo}}|image=[[File:Foo.png]]|value=1}}
'''Foo''' is a [[bar]] and a [[Baz (qux)|baz]]<ref name="a">{{cite web|url=http://x.org}}</ref> \
thing<ref name="b" />, like [[Apple]]s. See [http://example.com the site] and [http://example.org].
<!-- a hidden
comment -->
== History ==
It was made in 1900 &ndash; or so,&nbsp;really: 3 &lt; 4 and AT&amp;T.<sup>1</sup> <span \
class="x">Kept inner text.</span>
{| class="wikitable"
|-
| cell {{tpl}} || cell
|-
|
{|
| nested
|}
|}
[[File:Foo.jpg|thumb|A caption with a [[link]] and a [[Pipe|piped link]] inside]]
[[Image:Bar.svg|left]]


=== Later years ===
* ''Italic'' text with [[Category:Hidden]] and [[:Category:Shown]].
* Pipe trick: [[Qux (band)|]] and [[wikt:word|word]].{{citation needed|date=May 2020}}
# numbered item with <ref>a ref {{cite}} that holds [[links]]</ref>'''bold'''
__NOTOC__
The end of the article is long enough to keep: it says nothing in particular, on purpose, \
so that the cleaned text passes the minimum length.
[[Category:Things]]
[[de:Foo]]
"""

CLEANED = """\
Foo is a bar and a baz thing, like Apples. See the site and .

History
It was made in 1900 \u2013 or so,\u00a0really: 3 < 4 and AT&T.1 Kept inner text.

Later years
Italic text with and Category:Shown.
Pipe trick: Qux and word.
numbered item with bold

The end of the article is long enough to keep: it says nothing in particular, on purpose, \
so that the cleaned text passes the minimum length."""

FILLER = "A sentence of plain prose that pads an article past the minimum length. " * 4


def page(title: str, text: str, ns: int = 0, redirect: str | None = None) -> str:
    redirect_element = f'<redirect title="{escape(redirect)}" />' if redirect else ""
    return (
        f"<page><title>{escape(title)}</title><ns>{ns}</ns><id>1</id>{redirect_element}"
        f"<revision><id>2</id><model>wikitext</model>"
        f'<text bytes="{len(text)}" xml:space="preserve">{escape(text)}</text></revision></page>\n'
    )


def write_dump(path: Path, pages: list[str]) -> Path:
    xml = (
        f'<mediawiki xmlns="{NAMESPACE}" version="0.10" xml:lang="en">\n'
        "<siteinfo><sitename>Wikipedia</sitename></siteinfo>\n" + "".join(pages) + "</mediawiki>\n"
    ).encode()
    path.write_bytes(bz2.compress(xml) if path.suffix == ".bz2" else xml)
    return path


FIXTURE_PAGES = [
    page("Foo", ARTICLE),
    page("AccessibleComputing", FILLER, redirect="Access"),  # the element alone counts
    page("Old redirect", "#redirect [[Foo]]\n" + FILLER),
    page("Talk:Foo", FILLER, ns=1),
    page("Stub", "Too short to keep."),
    page("Second article", FILLER),
]


@pytest.fixture(params=["dump.xml", "dump.xml.bz2"])
def dump(request, tmp_path) -> Path:
    return write_dump(tmp_path / request.param, FIXTURE_PAGES)


def hash_split(title: str) -> str:
    u = int.from_bytes(hashlib.sha1(title.encode()).digest()[:8], "big") / 2**64
    return "validation" if u < 0.02 else "test" if u < 0.04 else "train"


def test_article_wikitext_is_cleaned_to_plain_text():
    assert clean_wikitext(ARTICLE) == CLEANED


def test_pages_are_read_whatever_the_compression_and_only_articles_kept(dump):
    pages = list(iter_pages(dump))
    assert [p.title for p in pages] == [
        "Foo",
        "AccessibleComputing",
        "Old redirect",
        "Talk:Foo",
        "Stub",
        "Second article",
    ]
    assert pages[0].text == ARTICLE and pages[3].namespace == 1 and pages[1].redirect
    kept = [p.title for p in pages if is_article(p)]
    assert kept == ["Foo", "Stub", "Second article"]


def test_small_dump_loads_end_to_end_with_the_byte_tokenizer(dump, tmp_path):
    corpus = load_corpus("wikipedia", path=str(dump), cache_dir=tmp_path / "cache")
    text = "".join(corpus.tokenizer.decode(corpus.splits[s]) for s in SPLITS)
    assert text == f"Foo\n{CLEANED}\nSecond article\n{clean_wikitext(FILLER)}\n"
    for split in SPLITS:
        assert len(corpus.splits[split]) > 0 and corpus.splits[split].dtype == np.uint16
        assert corpus.num_bytes[split] == len(corpus.splits[split])
    assert "2 articles" in corpus.source and "by position" in corpus.source


def test_articles_are_split_by_a_hash_of_their_title_deterministically(tmp_path):
    titles = [f"Article {i}" for i in range(150)]
    dump = write_dump(tmp_path / "many.xml", [page(t, f"'''{t}''' {FILLER}") for t in titles])
    first = load_corpus("wikipedia", path=str(dump), cache_dir=tmp_path / "a")
    second = load_corpus("wikipedia", path=str(dump), cache_dir=tmp_path / "b")
    for split in SPLITS:
        expected = "".join(f"{t}\n{t} {FILLER.strip()}\n" for t in titles if hash_split(t) == split)
        assert first.tokenizer.decode(first.splits[split]) == expected
        assert np.array_equal(first.splits[split], second.splits[split])
    assert "hash of the title" in first.source


def test_missing_file_is_a_data_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="nowhere.xml.bz2.*MediaWiki XML dump"):
        load_corpus("wikipedia", path=str(tmp_path / "nowhere.xml.bz2"), cache_dir=tmp_path)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("plain.xml", b"just some text, not XML", "not valid XML"),
        ("other.xml", b"<html><body>hello</body></html>", "found a <html> root"),
        ("broken.xml.bz2", b"BZh91AY&SY not really bzip2", "cannot be read"),
    ],
)
def test_file_that_is_not_a_dump_is_a_data_error(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=f"MediaWiki XML dump.*{reason}"):
        load_corpus("wikipedia", path=str(tmp_path / name), cache_dir=tmp_path / "cache")


def test_dump_without_usable_articles_is_a_data_error(tmp_path):
    dump = write_dump(tmp_path / "dump.xml", [FIXTURE_PAGES[i] for i in (1, 2, 3, 4)])
    with pytest.raises(DataError, match="has no article.*200 characters"):
        load_corpus("wikipedia", path=str(dump), cache_dir=tmp_path / "cache")


def test_cli_reports_a_bad_dump_on_one_line_with_exit_code_2(tmp_path, capsys):
    config = tiny_config(tmp_path / "missing.xml", tmp_path / "cache")
    config["data"]["corpus"] = "wikipedia"
    path = write_config(tmp_path / "c.yaml", config)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "missing.xml" in error[0] and "MediaWiki" in error[0]


@pytest.mark.parametrize(
    ("wikitext", "expected"),
    [
        ("a {{b {{c}} d", "a {{b d"),
        ("a }} b ]] c |}", "a }} b ]] c |}"),
        ("x [[File:f.png|cap [[y]]", "x [[File:f.png|cap y"),
        ("x [[a|{{b]] c", "x {{b c"),
        ("keep <!-- never closed", "keep"),
        ("keep <ref>never closed", "keep never closed"),
        ("{|\n| a table never closed", "{|\n| a table never closed"),
        ("{{a|\n|}}b", "b"),
        ("[[Foo (bar)|]] [[de:Foo]] [[w:en:X|x]]", "Foo x"),
        ("x<ref>a</ref>y<ref name=q/>z<REF>b</REF>", "xyz"),
        ("'''''both''''' [//example.org label]", "both label"),
    ],
)
def test_cleaner_edge_cases(wikitext, expected):
    assert clean_wikitext(wikitext) == expected


@pytest.mark.parametrize(
    "wikitext",
    [
        "{{" * 20_000 + "[[" * 20_000 + "x" + "]]" * 10_000,
        "<ref" * 20_000 + "<!--" * 20_000,
        "[http://a " * 20_000,
        "<ref>" * 20_000 + "<math>" * 20_000,
        "==" + " " * 50_000 + "x",
        "'" * 100_000,
    ],
)
def test_cleaner_stays_linear_on_pathological_markup(wikitext):
    assert isinstance(clean_wikitext(wikitext), str)

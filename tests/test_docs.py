"""The documentation's links: every relative link and image in README.md and docs/*.md
points to a file that exists and, for `page.md#anchor`, to a heading of that page
(GitHub's slugs); the README stays a front page; docs/index.md lists every page."""

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 250

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target), the target up to a space (a title) or ")"
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.I)
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def doc_files():
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def prose_lines(text):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def github_slug(heading):
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation
    removed (hyphens and underscores kept), each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFC", text).strip().lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return text.replace(" ", "-")


def anchors(path):
    """Every anchor of a Markdown file, with GitHub's -1, -2 ... for repeated headings."""
    seen, result = {}, set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        result.update(re.findall(r"<a\s+(?:name|id)\s*=\s*[\"']([^\"']+)[\"']", line))
    return result


def links(path):
    """(line number, target) of every link and image in a Markdown file's prose."""
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        line = INLINE_CODE.sub("", line)
        for target in INLINE_LINK.findall(line) + HTML_SRC.findall(line):
            yield number, target
        match = REFERENCE_DEF.match(line)
        if match:
            yield number, match.group(1)


def broken_links(path, root=ROOT):
    """Messages for the relative links of `path` that point nowhere."""
    problems = []
    for number, target in links(path):
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
            continue  # http:, https:, mailto: ... are not checked (no network)
        file_part, _, anchor = target.partition("#")
        file_part = unquote(file_part.split("?", 1)[0])
        where = f"{path.relative_to(root)}:{number}: {target}"
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{where}: {file_part} does not exist")
            continue
        if anchor and linked.suffix.lower() == ".md":
            if unquote(anchor).lower() not in anchors(linked):
                problems.append(f"{where}: no heading #{anchor} in {linked.relative_to(root)}")
    return problems


@pytest.mark.smoke
@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    problems = broken_links(path)
    assert not problems, "broken links:\n" + "\n".join(problems)


@pytest.mark.smoke
def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move details to docs/")


@pytest.mark.smoke
def test_index_lists_every_page():
    index = ROOT / "docs" / "index.md"
    listed = {(index.parent / target.partition("#")[0]).resolve() for _, target in links(index)}
    missing = [p.name for p in sorted(index.parent.glob("*.md")) if p != index and p.resolve() not in listed]
    assert not missing, f"docs/index.md does not link to: {', '.join(missing)}"


def test_checker_finds_broken_links(tmp_path):
    """The checker itself: a missing file and a missing heading are reported, fenced
    code and inline code are not links, and good links pass."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# Page\n\n## Speed and memory\n\n## `--data.context` of any odd width\n\n## Speed and memory\n")
    (tmp_path / "docs" / "figure.png").write_bytes(b"")
    readme = tmp_path / "README.md"
    readme.write_text(
        "[ok](docs/page.md) [ok](docs/page.md#speed-and-memory) [ok](docs/page.md#speed-and-memory-1)\n"
        "[ok](docs/page.md#--datacontext-of-any-odd-width) ![ok](docs/figure.png) [web](https://x.org/y)\n"
        "[self](#a-heading)\n\n## A heading\n\n"
        "`[not a link](nowhere.md)`\n```\n[not a link](nowhere.md)\n```\n"
        "[gone](docs/gone.md) ![gone](docs/gone.png) [bad anchor](docs/page.md#no-such-heading)\n"
        "[ref]: docs/also-gone.md\n")
    problems = broken_links(readme, root=tmp_path)
    assert [p.split(": ", 2)[1] for p in problems] == [
        "docs/gone.md", "docs/gone.png", "docs/page.md#no-such-heading", "docs/also-gone.md"], problems

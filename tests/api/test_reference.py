"""docs/api.md is the API as it is, and the README sends readers only to files it ships."""

from __future__ import annotations

import re
from pathlib import Path

from api.reference import current

ROOT = Path(__file__).resolve().parents[2]


def test_docs_api_md_matches_the_openapi_document() -> None:
    on_disk = (ROOT / "docs" / "api.md").read_text()
    assert on_disk == current(), "docs/api.md is stale: run `python -m api.reference > docs/api.md`"


def test_no_reference_points_outside_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/api.md" in readme
    for path in [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("*/*.py"), *ROOT.glob("*/*/*.py")]:
        if ".venv" in path.parts or path.name == Path(__file__).name:
            continue
        text = path.read_text()
        assert "../shared" not in text, path
        assert not re.search(r"\bPERF_NOTES\.md|\bPREFECT_NOTES\.md|\bSTYLE\.md", text), path
        for target in re.findall(r"\]\(([^)#]+)\)", text) if path.suffix == ".md" else []:
            if not target.startswith(("http://", "https://", "mailto:")):
                assert (path.parent / target).exists(), f"{path.name} links to missing {target}"

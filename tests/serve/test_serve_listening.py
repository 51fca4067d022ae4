"""The listening page of an evaluation: `metatts evaluate` writes index.html beside results.json (every player points
at a sample file that exists, every cell shows its episode's numbers), and `metatts serve --evaluation E/` serves
the same grid and the audio, nothing else of the folder."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from metatts.cli import main
from metatts.evaluation.listening import render_listening_page, write_listening_page

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = (0, 2)


@pytest.fixture(scope="module")
def evaluation(serve_runs, tmp_path_factory) -> Path:
    """A real `metatts evaluate` run (baseline and no adaptation) on the two test speakers of the tiny store."""
    pytest.importorskip("resemblyzer", reason="speaker similarity needs Resemblyzer (the eval extra)")
    root = tmp_path_factory.mktemp("listening")
    suite = root / "suite.yaml"
    suite.write_text(yaml.safe_dump({"corpus": "corpus", "features": str(serve_runs["store"]), "split": "test",
                                     "shots": 2, "queries": 2, "tasks_per_speaker": 1, "seed": 0,
                                     "step_grid": list(STEPS)}))
    code = main(["evaluate", "--baseline", str(serve_runs["checkpoint"]), "--task", str(suite), "--methods",
                 "baseline", "none", "--steps", *map(str, STEPS), "--out", str(root / "eval"), "--threads", "1",
                 "--vocoder", "griffinlim", "--listener-steps", str(STEPS[-1]), "--quiet"])  # the page, not the scores
    assert code == 0
    return root / "eval"


def _sources(page: str) -> list[str]:
    return [html.unescape(s) for s in re.findall(r"<audio[^>]* src='([^']+)'", page)]


@pytest.mark.slow
def test_evaluate_writes_a_listening_page_that_opens_from_disk(evaluation):
    page = (evaluation / "index.html").read_text()
    assert page == render_listening_page(evaluation)
    results = json.loads((evaluation / "results.json").read_text())
    speakers = list(dict.fromkeys(e["speaker"] for e in results["episodes"]))
    sources = _sources(page)
    # Per speaker (one sample each, --samples 1): its real recording, the baseline at each step, and
    # one cell of the flat method.
    assert len(sources) == len(speakers) * (1 + len(STEPS) + 1)
    for source in sources:
        assert not source.startswith(("/", "http")) and (evaluation / source).is_file(), source
    for speaker in speakers:
        assert f"samples/real/{speaker}-0.wav" in sources
        for k in STEPS:
            assert f"samples/baseline/step{k}/{speaker}-0.wav" in sources
        assert f"samples/none/step{STEPS[0]}/{speaker}-0.wav" in sources
    # A cell's similarity is that of the episode its audio came from.
    first = next(i for i, e in enumerate(results["episodes"]) if e["speaker"] == speakers[0])
    value = results["per_episode"]["similarity"]["baseline"][first][1]
    section = page.split(f"speaker {speakers[0]}</h2>")[1].split("<h2")[0]
    row = section.split("<th>baseline</th>")[1].split("</tr>")[0]
    cell = row.split("</td>")[1]
    assert f"similarity {value:.3f}" in cell and f"samples/baseline/step{STEPS[1]}/" in cell
    assert "https://" not in page and "<script" not in page


@pytest.mark.slow
def test_serve_evaluation_serves_the_grid_and_only_its_samples(evaluation, tmp_path):
    pytest.importorskip("starlette", reason="metatts serve needs the web extra")
    from metatts.serve.app import create_app
    from serve_http import LiveServer, request

    secret = evaluation / "cache" / "private.wav"
    secret.parent.mkdir(exist_ok=True)
    shutil.copy(next((evaluation / "samples" / "real").glob("*.wav")), secret)
    server = LiveServer(create_app(None, evaluation))
    try:
        assert request(f"{server.url}/").status == 200  # redirected to the listening page
        page = request(f"{server.url}/evaluation/")
        assert page.status == 200 and page.body.decode() == render_listening_page(evaluation)
        for source in _sources(page.body.decode()):
            reply = request(f"{server.url}/evaluation/{source}")
            assert reply.status == 200 and reply.headers["content-type"] == "audio/wav"
            assert reply.body == (evaluation / source).read_bytes()
        for path in ("results.json", "cache/private.wav", "samples/../cache/private.wav",
                     "samples/%2e%2e/cache/private.wav", "samples/..%2Fresults.json"):
            reply = request(f"{server.url}/evaluation/{path}")
            assert reply.status == 404 and reply.json()["status"] == 404, path
        # Without a checkpoint the voice API says why it is not there.
        reply = request(f"{server.url}/api/voices")
        assert reply.status == 503 and "--checkpoint" in reply.json()["error"]
        assert request(f"{server.url}/api/health").json()["evaluation"] == str(evaluation)
    finally:
        server.close()


def test_listening_page_of_a_folder_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="finished `metatts evaluate`"):
        write_listening_page(tmp_path)

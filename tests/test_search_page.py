"""The search page of `searchtune serve --ui` in a real headless Chromium (Debian's package)
driven by Selenium: the page loads, a query returns both columns, a screenshot is kept."""

from __future__ import annotations

import json
import shutil
import tempfile

import httpx
import pytest
from tests.conftest import REPO_ROOT, TINY_DISTRACTORS, TINY_ROWS, build_tiny_bert
from tests.http_servers import ThreadedServer

from components.serving import ServeConfig

ARTIFACTS = REPO_ROOT / "test-artifacts"
# A test-split query whose known positive is its own text: ranked first by both models.
EXACT_ROW = {"query": "不锈钢保温杯 大容量", "pos": ["不锈钢保温杯 大容量"]}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def page_server(tmp_path_factory, tiny_texts):
    folder = tmp_path_factory.mktemp("search")
    # Mean pooling, no instructions: a passage identical to the query scores cosine 1 in both models.
    base = build_tiny_bert(folder / "base", tiny_texts, pooling="mean", seed=0)
    finetuned = build_tiny_bert(folder / "finetuned", tiny_texts, pooling="mean", seed=1)
    corpus = folder / "corpus.jsonl"
    passages = [p for row in TINY_ROWS for p in row["pos"]] + TINY_DISTRACTORS + [EXACT_ROW["pos"][0]]
    corpus.write_text("".join(json.dumps({"id": f"p{i}", "text": t}, ensure_ascii=False) + "\n"
                              for i, t in enumerate(passages)), encoding="utf-8")
    test = folder / "test.jsonl"
    test.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in [EXACT_ROW] + TINY_ROWS[:6]),
                    encoding="utf-8")
    config = ServeConfig(model=str(finetuned), port=0, precision="fp32", device="cpu", ui=True, base_model=str(base),
                         corpus=str(corpus), test_data=str(test))
    with ThreadedServer(config) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert shutil.which("chromium") and shutil.which("chromedriver"), \
        "Chromium and its driver come from Debian's packages: `make setup` installs chromium and chromium-driver"
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # This machine's closed network makes Chromium misbehave without these (see GUIDE.md).
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_the_page_loads_and_a_test_query_returns_both_top_10_lists(page_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page_server.base_url + "/")
    assert "base vs fine-tuned" in browser.title
    examples = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#examples a")]
    assert EXACT_ROW["query"] in examples and TINY_ROWS[0]["query"] in examples

    query = EXACT_ROW["query"]
    box = browser.find_element(By.ID, "query")
    box.clear()
    box.send_keys(query)
    browser.find_element(By.ID, "search").click()
    WebDriverWait(browser, 60).until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#finetuned-results li"))

    base = browser.find_elements(By.CSS_SELECTOR, "#base-results li")
    finetuned = browser.find_elements(By.CSS_SELECTOR, "#finetuned-results li")
    assert len(base) == 10 and len(finetuned) == 10
    assert browser.find_element(By.ID, "query").get_attribute("value") == query
    assert "in the test split" in browser.find_element(By.ID, "known-note").text
    for results in (base, finetuned):
        assert "known-positive" in results[0].get_attribute("class") and "★" in results[0].text
        assert EXACT_ROW["pos"][0] in results[0].text and results[0].text.startswith("1.000")
        assert not any("known-positive" in hit.get_attribute("class") for hit in results[1:])

    screenshot = tmp_path / "search_page.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(screenshot, ARTIFACTS / "search_page.png")


def test_a_test_query_whose_positive_is_not_in_the_top_10_says_so(page_server):
    # Each column either marks the positive or says it missed it.
    row = TINY_ROWS[0]
    reply = httpx.get(page_server.base_url + "/search", params={"q": row["query"]})
    for column in reply.text.split('<section class="column">')[1:]:
        marked = column.count('class="hit known-positive"')
        assert (marked == 1 and row["pos"][0] in column) or (marked == 0 and "No known positive in the top 10" in column)


def test_a_query_outside_the_test_split_marks_nothing_and_html_is_escaped(page_server):
    reply = httpx.get(page_server.base_url + "/search", params={"q": "<script>x</script> 保温杯"})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    assert "<script>x</script>" not in reply.text and "&lt;script&gt;" in reply.text
    assert "known-note" not in reply.text and 'class="hit known-positive"' not in reply.text
    assert reply.text.count('class="hit') == 20


def test_the_api_still_serves_beside_the_page(page_server):
    reply = httpx.post(page_server.base_url + "/v1/embeddings", json={"model": "finetuned", "input": "保温杯"})
    assert reply.status_code == 200 and len(reply.json()["data"][0]["embedding"]) == 32

"""The web UI in a real browser against a real server and the real smollm2 model."""

from __future__ import annotations

import json

import httpx
import pytest
from webutil import ARTIFACTS, SKIP_REASON, Server, open_context, wait_slots_idle

if SKIP_REASON:
    pytest.skip(SKIP_REASON, allow_module_level=True)

# The example page of llama.cpp's server README ("Extending or building alternative Web Front
# End"), verbatim.
README_EXAMPLE = """<html>
  <body>
    <pre>
      <script type="module">
        import { llama } from '/completion.js'

        const prompt = `### Instruction:
Write dad jokes, each one paragraph.
You can use html formatting if needed.

### Response:`

        for await (const chunk of llama(prompt)) {
          document.write(chunk.data.content)
        }
      </script>
    </pre>
  </body>
</html>
"""


def send(page, text: str) -> None:
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")


def wait_reply(page, timeout: float = 60000):
    page.wait_for_selector("article.msg.assistant:not(.pending)", timeout=timeout)
    return page.locator("article.msg.assistant").last


def test_page_loads(ui, server):
    page, errors = ui
    assert "rllama" in page.title()
    assert page.locator("#composer-input").is_visible()
    page.wait_for_function("document.getElementById('model-name').textContent.includes('.gguf')")
    assert "idle" in page.inner_text("#server-state-text")
    page.wait_for_function("document.getElementById('slots-state').textContent.includes('#0 idle')")
    # the settings dialog shows the server's defaults (GET /props) as placeholders
    page.click("#settings-btn")
    props = httpx.get(server.url + "/props").json()["default_generation_settings"]
    assert float(page.get_attribute("#set-temperature", "placeholder")) == pytest.approx(props["temperature"])
    assert int(page.get_attribute("#set-top_k", "placeholder")) == props["top_k"]
    page.keyboard.press("Escape")
    assert not errors, errors


def test_message_streams_in(ui):
    page, errors = ui

    # A reply long enough to span many frames: the page renders at most once per animation
    # frame, and a one-sentence reply from a fast server can land in two (seen in CI).
    def longer_reply(route):
        body = json.loads(route.request.post_data)
        body.update(ignore_eos=True, max_tokens=120, n_predict=120)
        route.continue_(post_data=json.dumps(body))

    page.route("**/v1/chat/completions", longer_reply)
    # record the reply's text each time it changes, to see it grow token by token
    page.evaluate("""() => {
        window.__lengths = [];
        new MutationObserver(() => {
            const m = document.querySelector('article.msg.assistant.pending .body');
            if (m) window.__lengths.push(m.textContent.length);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    }""")
    send(page, "Write one sentence about the sea.")
    reply = wait_reply(page)
    text = reply.locator(".body").inner_text()
    assert text.strip()
    lengths = sorted({x for x in page.evaluate("window.__lengths") if x > 0})
    assert len(lengths) >= 3, f"the reply did not stream: {lengths}"
    assert "generation" in page.inner_text("#stats") and "t/s" in page.inner_text("#stats")
    assert "t/s" in reply.locator(".timings").inner_text()
    # the user message and the reply are kept in the conversation list and in localStorage
    assert page.locator("#conv-list li").count() == 1
    stored = json.loads(page.evaluate("localStorage.getItem('rllama.conversations')"))
    assert [m["role"] for m in stored[0]["messages"]] == ["user", "assistant"]
    assert stored[0]["messages"][1]["content"] == text.strip() or stored[0]["messages"][1]["content"].strip()
    assert not errors, errors


def test_stop_mid_stream_frees_the_slot(ui, server):
    page, errors = ui

    def long_reply(route):
        body = json.loads(route.request.post_data)
        body.update(ignore_eos=True, max_tokens=1500, n_predict=1500)
        route.continue_(post_data=json.dumps(body))

    page.route("**/v1/chat/completions", long_reply)
    send(page, "Tell me a long story.")
    page.wait_for_function(
        "(document.querySelector('article.msg.assistant.pending .body')?.textContent.length || 0) > 20",
        timeout=30000)
    assert page.locator("#stop-btn").is_visible()
    slots = httpx.get(server.url + "/slots").json()
    assert slots[0]["is_processing"], slots
    page.click("#stop-btn")
    reply = wait_reply(page, timeout=10000)
    assert reply.locator(".note").inner_text() == "Stopped."
    assert page.locator("#send-btn").is_visible()
    n = len(reply.locator(".body").inner_text())
    wait_slots_idle(server.url)
    health = httpx.get(server.url + "/health").json()
    assert health["slots_processing"] == 0
    # nothing more arrives after the stop; the partial reply stays
    page.wait_for_timeout(300)
    assert len(reply.locator(".body").inner_text()) == n > 0
    # Escape stops too
    send(page, "Another long story, please.")
    page.wait_for_function("!!document.querySelector('article.msg.assistant.pending .body')?.textContent")
    page.keyboard.press("Escape")
    wait_reply(page, timeout=10000)
    wait_slots_idle(server.url)
    assert not errors, errors


def test_changed_settings_reach_the_request(ui):
    page, errors = ui
    page.click("#settings-btn")
    page.fill("#set-system", "You answer in one word.")
    page.fill("#set-temperature", "0.25")
    page.fill("#set-top_k", "7")
    page.fill("#set-top_p", "0.5")
    page.fill("#set-min_p", "0.1")
    page.fill("#set-n_predict", "6")
    page.fill("#set-repeat_penalty", "1.3")
    page.fill("#set-seed", "1234")
    page.select_option("#set-constraint", "json_schema")
    page.fill("#set-constraint-text", '{"type": "object", "properties": {"a": {"type": "integer"}}}')
    page.click("#settings-save")
    assert not page.locator("#settings-dialog").is_visible()
    with page.expect_request("**/v1/chat/completions") as req:
        send(page, "Hi")
    body = json.loads(req.value.post_data)
    assert body["messages"][0] == {"role": "system", "content": "You answer in one word."}
    assert body["messages"][-1] == {"role": "user", "content": "Hi"}
    assert body["stream"] is True
    assert body["temperature"] == 0.25 and body["top_k"] == 7 and body["top_p"] == 0.5
    assert body["min_p"] == 0.1 and body["repeat_penalty"] == 1.3 and body["seed"] == 1234
    assert body["max_tokens"] == 6
    assert body["response_format"] == {"type": "json_object",
                                       "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}
    reply = wait_reply(page)
    assert not reply.locator(".note.error").count(), reply.inner_text()
    assert reply.locator(".body").inner_text().startswith("{")
    # a bad value is refused in the dialog, not sent
    page.click("#settings-btn")
    page.fill("#set-top_k", "2.5")
    page.click("#settings-save")
    assert "whole number" in page.inner_text("#settings-error")
    page.click("#settings-cancel")
    assert not errors, errors


def test_regenerate_edit_and_conversations(ui):
    page, errors = ui
    send(page, "Name a color.")
    wait_reply(page)
    with page.expect_request("**/v1/chat/completions") as req:
        page.click("button.regen-btn")
    assert [m["content"] for m in json.loads(req.value.post_data)["messages"]] == ["Name a color."]
    wait_reply(page)
    assert page.locator("article.msg").count() == 2
    # edit the question and resend: the old reply goes, a new one comes
    page.click("article.msg.user button:has-text('Edit')")
    page.fill("article.msg.user textarea", "Name a fruit.")
    with page.expect_request("**/v1/chat/completions") as req:
        page.press("article.msg.user textarea", "Enter")
    assert [m["content"] for m in json.loads(req.value.post_data)["messages"]] == ["Name a fruit."]
    wait_reply(page)
    assert page.locator("article.msg").count() == 2
    assert page.locator("article.msg.user .body").inner_text() == "Name a fruit."
    # a new conversation, then both are listed and survive a reload
    page.click("#new-chat")
    assert page.locator("article.msg").count() == 0
    send(page, "Name an animal.")
    wait_reply(page)
    assert page.locator("#conv-list li").count() == 2
    page.reload()
    page.wait_for_selector("#conv-list li")
    titles = page.locator("#conv-list .conv-open").all_inner_texts()
    assert titles == ["Name an animal.", "Name a fruit."]
    page.click("#conv-list .conv-open >> text=Name a fruit.")
    assert page.locator("article.msg.user .body").inner_text() == "Name a fruit."
    page.once("dialog", lambda d: d.accept())
    page.click("#conv-list li[aria-current='true'] .conv-del")
    assert page.locator("#conv-list li").count() == 1
    assert not errors, errors


def test_html_in_a_real_reply_is_shown_as_text(ui):
    page, errors = ui
    nasty = '<img src=x onerror="window.__xss=1"> <script>window.__xss=2</script> <b>bold?</b>'
    grammar = "root ::= " + json.dumps(nasty)
    page.click("#settings-btn")
    page.fill("#set-n_predict", "80")
    page.select_option("#set-constraint", "grammar")
    page.fill("#set-constraint-text", grammar)
    page.click("#settings-save")
    send(page, "Say something.")
    reply = wait_reply(page)
    assert reply.locator(".body").inner_text() == nasty
    assert page.locator("#messages img, #messages script, #messages b").count() == 0
    assert page.evaluate("window.__xss") is None
    assert not errors, errors


def test_html_and_bad_links_in_a_streamed_reply_stay_inert(ui):
    """The same through a canned SSE stream, with what a Markdown renderer could be fooled by."""
    page, errors = ui
    pieces = ["Look: <img src=x onerror=window.__xss=1>", " and <script>window.__xss=2</script>\n\n",
              "[click](javascript:window.__xss=3) ![pic](http://127.0.0.1:1/x.png\" onerror=\"window.__xss=4)",
              " <a href=\"javascript:window.__xss=5\">a</a>\n\n```html\n<iframe src=javascript:window.__xss=6>",
              "</iframe>\n```\n\n**fine** `<code>` [ok](https://example.org/)"]
    sse = "".join(f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': p}}]})}\n\n" for p in pieces)
    sse += 'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    page.route("**/v1/chat/completions",
               lambda route: route.fulfill(status=200, content_type="text/event-stream", body=sse))
    send(page, "Hi")
    reply = wait_reply(page)
    text = reply.locator(".body").inner_text()
    for literal in ("<img src=x onerror=window.__xss=1>", "<script>window.__xss=2</script>",
                    "[click](javascript:window.__xss=3)", '<a href="javascript:window.__xss=5">a</a>',
                    "<iframe src=javascript:window.__xss=6>", "<code>"):
        assert literal in text, (literal, text)
    body = reply.locator(".body")
    assert body.locator("img, script, iframe, b, a[href^='javascript']").count() == 0
    assert body.locator("strong").inner_text() == "fine"
    hrefs = [a.get_attribute("href") for a in body.locator("a").all()]
    assert "https://example.org/" in hrefs
    assert all(h.startswith(("http://", "https://")) for h in hrefs), hrefs
    assert body.locator(".code-block button.copy-btn").count() == 1
    page.wait_for_timeout(200)
    assert page.evaluate("window.__xss") is None
    assert not errors, errors


def test_markdown_rendering(ui):
    page, errors = ui
    html = page.evaluate("""() => {
        const md = '# Title\\n\\nSome *em* and **strong** and `x < y`.\\nNext line.\\n\\n' +
                   '- one\\n- two\\n  - nested\\n\\n1. first\\n2. second\\n\\n> quoted\\n\\n' +
                   '| a | b |\\n|---|--:|\\n| 1 | 2 |\\n\\n```js\\nlet a = "<b>";\\n```\\n\\nsnake_case_name';
        const div = document.createElement('div');
        div.append(window.rllamaUI.renderMarkdown(md));
        return div.innerHTML;
    }""")
    assert "<h1>Title</h1>" in html
    assert "<em>em</em>" in html and "<strong>strong</strong>" in html and "<code>x &lt; y</code>" in html
    assert "<br>" in html  # a single newline is a line break in chat replies
    assert "<ul><li>one</li><li>two<ul><li>nested</li></ul></li></ul>" in html
    assert "<ol><li>first</li><li>second</li></ol>" in html
    assert "<blockquote><p>quoted</p></blockquote>" in html
    assert "<th>a</th>" in html and 'style="text-align: right;">2</td>' in html
    assert 'class="language-js">let a = "&lt;b&gt;";</code>' in html
    assert "snake_case_name" in html and "<em>case</em>" not in html
    # the copy button copies the code's text
    assert not errors, errors


def test_completion_view_shows_token_probabilities(ui):
    page, errors = ui
    page.click("#tab-completion")
    page.fill("#prompt-input", "The capital of France is")
    page.fill("#n-probs", "3")
    with page.expect_request("**/completion") as req:
        page.click("#complete-btn")
    body = json.loads(req.value.post_data)
    assert body["n_probs"] == 3 and body["stream"] is True and body["n_predict"] == 24
    page.wait_for_selector("#complete-btn:not([hidden])", timeout=60000)
    tokens = page.locator("#completion-output .tok")
    assert tokens.count() > 1
    tokens.first.hover()
    tip = page.locator("#token-tip")
    assert tip.is_visible()
    assert tip.locator("tr").count() == 4  # the chosen token, then the top 3
    assert "%" in tip.inner_text()
    # by keyboard: focus the output, move with the arrow keys
    page.focus("#completion-output")
    page.keyboard.press("ArrowRight")
    assert page.locator("#completion-output .tok.active").get_attribute("data-i") == "1"
    assert tip.is_visible()
    assert "Last completion" in page.inner_text("#stats") and "t/s" in page.inner_text("#stats")
    assert not errors, errors


def test_api_key_protected_server_prompts_for_the_key(browser, model_path):
    server = Server(model_path, "--api-key", "sesame")
    try:
        ctx = open_context(browser)
        page = ctx.new_page()
        page.goto(server.url + "/")
        banner = page.locator("#auth-banner")
        banner.wait_for(state="visible", timeout=10000)
        assert page.locator("#auth-key").is_visible()
        page.screenshot(path=str(ARTIFACTS / "api-key-prompt.png"))
        page.fill("#auth-key", "wrong")
        page.press("#auth-key", "Enter")
        banner.wait_for(state="visible", timeout=10000)
        assert "refused" in page.inner_text("#auth-detail")
        page.fill("#auth-key", "sesame")
        page.press("#auth-key", "Enter")
        page.wait_for_function("document.getElementById('model-name').textContent.includes('.gguf')")
        assert not banner.is_visible()
        with page.expect_request("**/v1/chat/completions") as req:
            send(page, "Hello")
        assert req.value.headers["authorization"] == "Bearer sesame"
        reply = wait_reply(page)
        assert reply.locator(".body").inner_text().strip(), reply.inner_text()
        assert not reply.locator(".note.error").count()
        # completion.js: the key as config or as a param; without it, a LlamaError with status 401
        r = page.evaluate("""async () => {
            const m = await import('/completion.js');
            const a = await m.llamaPromise('Hi', { n_predict: 3 }, { api_key: 'sesame' });
            const b = await m.llamaPromise('Hi', { n_predict: 3, api_key: 'sesame' });
            let status = null;
            try { await m.llamaPromise('Hi', { n_predict: 3 }); } catch (e) { status = e.status; }
            return { a, b, status };
        }""")
        assert r["a"] and r["b"] and r["status"] == 401
        ctx.close()
    finally:
        server.stop()


def test_readme_completion_js_example_renders_output(browser, server):
    ctx = open_context(browser)
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # the README's page, served from the server's origin so '/completion.js' is the server's
    page.route(server.url + "/example.html",
               lambda route: route.fulfill(status=200, content_type="text/html", body=README_EXAMPLE))
    page.goto(server.url + "/example.html")
    page.wait_for_function("document.body && document.body.innerText.trim().length > 40", timeout=60000)
    assert page.inner_text("body").strip()
    page.screenshot(path=str(ARTIFACTS / "readme-example.png"))
    assert not errors, errors
    ctx.close()
    wait_slots_idle(server.url)


def test_completion_js_module_api(ui):
    page, _ = ui
    result = page.evaluate("""async () => {
        const m = await import('/completion.js');
        const chunks = [];
        for await (const c of m.llama('Once upon a time', { n_predict: 5, temperature: 0 })) chunks.push(c);
        const text = await m.llamaPromise('Once upon a time', { n_predict: 5, temperature: 0 });
        const info = await m.llamaModelInfo();
        return { n: chunks.length, last: chunks[chunks.length - 1].data, text,
                 joined: chunks.map(c => c.data.content).join(''), info };
    }""")
    assert result["last"]["stop"] is True and "timings" in result["last"]
    assert result["n"] >= 5 and result["joined"] == result["text"] and result["text"]
    assert "temperature" in result["info"]


def test_accessible_names_and_keyboard(ui):
    page, errors = ui
    unnamed = page.evaluate("""() => [...document.querySelectorAll('button, input, select, textarea')]
        .filter(e => e.offsetParent !== null || e.closest('dialog'))
        .filter(e => !(e.getAttribute('aria-label') || e.labels?.length || e.textContent.trim()))
        .map(e => e.outerHTML)""")
    assert unnamed == []
    # keyboard only: the skip link leads to the message box, Enter sends
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    page.keyboard.press("Enter")
    page.keyboard.type("Hi")
    assert page.evaluate("document.activeElement.id") == "composer-input"
    page.keyboard.press("Enter")
    wait_reply(page)
    # the tabs follow the ARIA tabs pattern (arrow keys)
    page.focus("#tab-chat")
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#tab-completion", "aria-selected") == "true"
    assert page.locator("#completion-view").is_visible()
    assert not errors, errors


SHOWCASE = [{
    "id": "cshow", "title": "Markdown showcase", "created": 1, "updated": 2,
    "messages": [
        {"role": "user", "content": "Show me a Python function, a list and a table."},
        {"role": "assistant", "content": (
            "Here is a function:\n\n```python\ndef add(a, b):\n    \"\"\"Return a + b.\"\"\"\n    return a + b\n```\n\n"
            "Things to note:\n\n- it takes **two** arguments\n- it returns their *sum*\n- `add(2, 3)` is `5`\n\n"
            "| input | output |\n|---|---:|\n| 1, 2 | 3 |\n| 2, 3 | 5 |\n\n> Tip: see [the docs](https://docs.python.org/)."),
         "timings": {"prompt_n": 31, "prompt_per_second": 412.5, "predicted_n": 64, "predicted_per_second": 38.2}},
        {"role": "user", "content": "And <b>HTML</b>?"},
        {"role": "assistant", "content": "It is shown as text: <b>HTML</b> <img src=x onerror=alert(1)>",
         "timings": {"prompt_n": 12, "prompt_per_second": 300.1, "predicted_n": 20, "predicted_per_second": 40.0}},
    ],
}]


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("device,size", [("desktop", (1280, 800)), ("phone", (390, 844))])
def test_screenshots(browser, server, scheme, device, size):
    ctx = open_context(browser, viewport=size, color_scheme=scheme,
                       storage={"rllama.conversations": SHOWCASE, "rllama.current": "cshow"})
    page = ctx.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector("#server-state[data-state='ok']")
    page.wait_for_selector("article.msg.assistant")
    page.wait_for_timeout(200)
    # nothing wider than the screen (no sideways scrolling on a phone)
    assert page.evaluate("document.documentElement.scrollWidth") <= size[0]
    page.screenshot(path=str(ARTIFACTS / f"chat-{device}-{scheme}.png"))
    if device == "phone":
        page.click("#menu-btn")
        page.wait_for_timeout(250)
        assert page.locator("#conv-list").is_visible()
        page.screenshot(path=str(ARTIFACTS / f"conversations-{device}-{scheme}.png"))
        page.keyboard.press("Escape")
    page.click("#settings-btn")
    page.screenshot(path=str(ARTIFACTS / f"settings-{device}-{scheme}.png"))
    page.keyboard.press("Escape")
    page.click("#tab-completion")
    page.fill("#prompt-input", "The capital of France is")
    page.click("#complete-btn")
    page.wait_for_selector("#complete-btn:not([hidden])", timeout=60000)
    page.locator("#completion-output .tok").first.hover()
    page.screenshot(path=str(ARTIFACTS / f"completion-{device}-{scheme}.png"))
    ctx.close()


def test_sse_parser_handles_split_chunks_and_error_lines(ui):
    page, _ = ui
    events = page.evaluate("""async () => {
        const { sseEvents } = await import('/completion.js');
        const parts = ['data: {"a":', '1}\\r', '\\n\\r\\n: a comment\\n', 'event: x\\ndata: line1\\ndata: line2\\n\\n',
                       'id: 7\\ndata:no-space\\n\\nerror: {"error":{"code":500,"message":"boom"}}\\n\\n', 'data: tail'];
        const enc = new TextEncoder();
        const body = new ReadableStream({ start(c) { for (const p of parts) c.enqueue(enc.encode(p)); c.close(); } });
        const out = [];
        for await (const ev of sseEvents(new Response(body))) out.push(ev);
        return out;
    }""")
    assert [e["data"] for e in events] == ['{"a":1}', "line1\nline2", "no-space", "", "tail"]
    assert events[1]["event"] == "x" and events[2]["id"] == "7"
    assert json.loads(events[3]["error"])["error"]["message"] == "boom"


def test_a_stream_error_is_shown(ui):
    page, _ = ui
    sse = ('data: {"content": "Hello", "stop": false}\n\n'
           'error: {"error": {"code": 500, "message": "the engine fell over", "type": "server_error"}}\n\n')
    page.route("**/completion", lambda route: route.fulfill(status=200, content_type="text/event-stream", body=sse))
    page.click("#tab-completion")
    page.click("#complete-btn")
    page.wait_for_selector("#completion-output [role='alert']")
    assert "the engine fell over" in page.inner_text("#completion-output")
    assert page.locator("#complete-btn").is_visible()


def test_theme_toggle_cycles_and_persists(ui):
    page, _ = ui
    theme = "document.documentElement.dataset.theme || 'auto'"
    assert page.evaluate(theme) == "auto"
    page.click("#theme-btn")
    assert page.evaluate(theme) == "light"
    page.click("#theme-btn")
    assert page.evaluate(theme) == "dark"
    assert "dark" in page.get_attribute("#theme-btn", "aria-label")
    bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.reload()
    assert page.evaluate(theme) == "dark"
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == bg
    page.click("#theme-btn")
    assert page.evaluate(theme) == "auto"


def test_the_page_works_under_its_own_content_security_policy(browser, server):
    """The other tests bypass the CSP (Playwright's predicates use eval); here it is enforced."""
    ctx = open_context(browser, bypass_csp=False)
    page = ctx.new_page()
    problems = []
    page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_selector("#server-state[data-state='ok']")
    send(page, "Write a list of two colors, and a line of code in a code block.")
    reply = wait_reply(page)
    assert reply.locator(".body").inner_text().strip()
    page.click("#tab-completion")
    page.click("#complete-btn")
    page.wait_for_selector("#complete-btn:not([hidden])", timeout=60000)
    page.locator("#completion-output .tok").first.hover()
    assert page.locator("#token-tip").is_visible()
    assert not problems, problems
    ctx.close()


def test_readme_example_with_path_dir(browser, model_path, tmp_path):
    """The README's way: `--path ./your-directory` holding the page, which imports /completion.js."""
    (tmp_path / "index.html").write_text(README_EXAMPLE)
    server = Server(model_path, "--path", str(tmp_path))
    try:
        # the page comes from --path, /completion.js from the built-in UI (llama.cpp's fallback)
        assert httpx.get(server.url + "/completion.js", timeout=10).status_code == 200
        ctx = open_context(browser)
        page = ctx.new_page()
        page.goto(server.url + "/")
        page.wait_for_function("document.body && document.body.innerText.trim().length > 40", timeout=60000)
        assert "Write dad jokes" not in page.inner_text("body")  # the output, not the page's source
        ctx.close()
    finally:
        server.stop()


def test_corrupt_storage_does_not_break_the_page(browser, server):
    ctx = open_context(browser, storage={"rllama.conversations": {"not": "a list"}, "rllama.settings": None,
                                         "rllama.apiKey": 42})
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_selector("#server-state[data-state='ok']")
    send(page, "Hi")
    assert wait_reply(page).locator(".body").inner_text().strip()
    assert not errors, errors
    ctx.close()


def test_copy_buttons_copy_the_code_and_the_reply(browser, server):
    ctx = open_context(browser, storage={"rllama.conversations": SHOWCASE, "rllama.current": "cshow"})
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page = ctx.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector("article.msg.assistant .code-block")
    page.click("article.msg.assistant .code-block .copy-btn")
    page.wait_for_selector("article.msg.assistant .code-block .copy-btn:has-text('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == 'def add(a, b):\n    """Return a + b."""\n    return a + b'
    page.locator("article.msg.assistant .meta button:has-text('Copy')").last.click()
    assert page.evaluate("navigator.clipboard.readText()") == SHOWCASE[0]["messages"][3]["content"]
    ctx.close()

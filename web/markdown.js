// A small Markdown renderer that builds DOM nodes, never HTML strings.
//
// Model text reaches the page only through document.createTextNode / textContent, so a reply
// holding "<script>" or "<img onerror=...>" is shown as those characters: there is no markup to
// escape because nothing is ever parsed as HTML. Supported: fenced code blocks (with a copy
// button), headings, paragraphs with line breaks, ordered and unordered (nested) lists,
// blockquotes, horizontal rules, pipe tables, `code`, **bold**, *italic*, ~~strike~~, and links
// whose URL is http(s) or mailto (anything else stays text). Images are shown as links.

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:\s+(.*?))?\s*#*\s*$/;
const HR = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const ITEM = /^( *)([-*+]|\d{1,9}[.)])(?:\s+(.*)|$)/;
const TABLE_SEP = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  if (attrs) for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

export async function copyText(text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch (_) {
    /* fall back below */
  }
  const ta = el("textarea");
  ta.value = text;
  ta.setAttribute("readonly", "");
  ta.style.position = "fixed";
  ta.style.opacity = "0";
  document.body.append(ta);
  ta.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch (_) {
    ok = false;
  }
  ta.remove();
  return ok;
}

function codeBlock(code, lang) {
  const label = lang || "text";
  const button = el("button", { type: "button", class: "copy-btn", "aria-label": `Copy ${label} code` }, "Copy");
  button.addEventListener("click", async () => {
    const ok = await copyText(code);
    button.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => (button.textContent = "Copy"), 1500);
  });
  const codeEl = el("code", lang ? { class: `language-${lang.replace(/[^\w+#.-]/g, "")}` } : null, code);
  return el("div", { class: "code-block" }, el("div", { class: "code-head" }, el("span", null, label), button),
    el("pre", { tabindex: "0" }, codeEl));
}

function safeHref(url) {
  try {
    const u = new URL(url, "https://invalid.example/");
    if (!/^(https?:|mailto:)$/.test(u.protocol)) return null;
    if (u.host === "invalid.example") return null; // relative links: keep as text
    return u.href;
  } catch (_) {
    return null;
  }
}

// Inline spans, earliest match first; the text of a span is parsed again for nested spans.
const INLINE = [
  { re: /`+/y, kind: "code" },
  { re: /!?\[([^\]\n]*)\]\(\s*<?([^\s)<>]+)>?(?:\s+"[^"]*")?\s*\)/y, kind: "link" },
  { re: /(\*\*|__)(?=\S)([\s\S]*?\S)\1/y, kind: "strong" },
  { re: /(\*|_)(?=\S)([\s\S]*?\S)\1/y, kind: "em" },
  { re: /~~(?=\S)([\s\S]*?\S)~~/y, kind: "del" },
  { re: /https?:\/\/[^\s<>()]+[^\s<>().,;:!?'"]/y, kind: "autolink" },
];
const INLINE_START = /[`!\[*_~h\\]/g;

function inline(text, parent) {
  let pos = 0;
  let plain = "";
  const flushPlain = () => {
    if (!plain) return;
    const lines = plain.split("\n");
    lines.forEach((line, i) => {
      if (i) parent.append(el("br"));
      if (line) parent.append(document.createTextNode(line));
    });
    plain = "";
  };
  while (pos < text.length) {
    INLINE_START.lastIndex = pos;
    const m0 = INLINE_START.exec(text);
    if (!m0) break;
    plain += text.slice(pos, m0.index);
    pos = m0.index;
    let matched = false;
    if (text[pos] === "\\") {
      // a backslash escapes the punctuation after it
      if (/[!-\/:-@\[-`{-~]/.test(text[pos + 1] || "")) {
        plain += text[pos + 1];
        pos += 2;
      } else {
        plain += "\\";
        pos += 1;
      }
      continue;
    }
    for (const { re, kind } of INLINE) {
      re.lastIndex = pos;
      const m = re.exec(text);
      if (!m) continue;
      if (kind === "code") {
        // a code span closes on a run of backticks of the same length
        const ticks = m[0];
        const end = text.indexOf(ticks, pos + ticks.length);
        if (end < 0) continue;
        flushPlain();
        let code = text.slice(pos + ticks.length, end).replace(/\n/g, " ");
        if (/^ .* $/.test(code)) code = code.slice(1, -1);
        parent.append(el("code", null, code));
        pos = end + ticks.length;
      } else if (kind === "link") {
        const href = safeHref(m[2]);
        if (!href) continue;
        flushPlain();
        const a = el("a", { href, target: "_blank", rel: "noopener noreferrer nofollow" });
        inline(m[1] || href, a);
        parent.append(a);
        pos += m[0].length;
      } else if (kind === "autolink") {
        const href = safeHref(m[0]);
        if (!href) continue;
        flushPlain();
        parent.append(el("a", { href, target: "_blank", rel: "noopener noreferrer nofollow" }, m[0]));
        pos += m[0].length;
      } else {
        // "_" only counts at word boundaries (snake_case stays text)
        if (m[1] && m[1][0] === "_" && (/\w/.test(text[pos - 1] || "") || /\w/.test(text[pos + m[0].length] || ""))) continue;
        flushPlain();
        const node = el(kind);
        inline(kind === "del" ? m[1] : m[2], node);
        parent.append(node);
        pos += m[0].length;
      }
      matched = true;
      break;
    }
    if (!matched) {
      plain += text[pos];
      pos += 1;
    }
  }
  plain += text.slice(pos);
  flushPlain();
}

function splitRow(line) {
  let s = line.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
  return s.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
}

function table(lines, parent) {
  const head = splitRow(lines[0]);
  const aligns = splitRow(lines[1]).map((c) =>
    c.startsWith(":") && c.endsWith(":") ? "center" : c.endsWith(":") ? "right" : c.startsWith(":") ? "left" : "");
  const t = el("table");
  const tr = el("tr");
  head.forEach((c, i) => {
    const th = el("th");
    if (aligns[i]) th.style.textAlign = aligns[i];
    inline(c, th);
    tr.append(th);
  });
  t.append(el("thead", null, tr));
  const body = el("tbody");
  for (const line of lines.slice(2)) {
    const row = el("tr");
    const cells = splitRow(line);
    head.forEach((_, i) => {
      const td = el("td");
      if (aligns[i]) td.style.textAlign = aligns[i];
      inline(cells[i] || "", td);
      row.append(td);
    });
    body.append(row);
  }
  t.append(body);
  parent.append(el("div", { class: "table-wrap" }, t));
}

function startsBlock(line, next) {
  return FENCE.test(line) || HEADING.test(line) || HR.test(line) || QUOTE.test(line) || ITEM.test(line) ||
    (line.includes("|") && next !== undefined && TABLE_SEP.test(next) && next.includes("-"));
}

function blocks(lines, parent) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i++;
      continue;
    }
    let m;
    if ((m = FENCE.exec(line))) {
      const fence = m[1];
      const indent = line.length - line.trimStart().length;
      const body = [];
      i++;
      while (i < lines.length && !new RegExp(`^ {0,3}${fence[0]}{${fence.length},}\\s*$`).test(lines[i])) {
        body.push(indent ? lines[i].replace(new RegExp(`^ {0,${indent}}`), "") : lines[i]);
        i++;
      }
      i++; // the closing fence (or the end of a still-streaming block)
      parent.append(codeBlock(body.join("\n"), m[2]));
      continue;
    }
    if ((m = HEADING.exec(line))) {
      const h = el(`h${m[1].length}`);
      inline(m[2] || "", h);
      parent.append(h);
      i++;
      continue;
    }
    if (HR.test(line)) {
      parent.append(el("hr"));
      i++;
      continue;
    }
    if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && lines[i].trim() && (m = QUOTE.exec(lines[i]) || (inner.length && !startsBlock(lines[i]) ? [0, lines[i]] : null))) {
        inner.push(m[1]);
        i++;
      }
      const q = el("blockquote");
      blocks(inner, q);
      parent.append(q);
      continue;
    }
    if ((m = ITEM.exec(line))) {
      const ordered = /\d/.test(m[2]);
      const baseIndent = m[1].length;
      const list = el(ordered ? "ol" : "ul");
      if (ordered && parseInt(m[2], 10) !== 1) list.setAttribute("start", String(parseInt(m[2], 10)));
      let items = [];
      while (i < lines.length) {
        const im = ITEM.exec(lines[i]);
        if (im && im[1].length <= baseIndent + 1 && /\d/.test(im[2]) === ordered) {
          items.push([im[3] || ""]);
          i++;
          continue;
        }
        if (im && im[1].length <= baseIndent + 1) break; // a different kind of list starts
        if (!items.length) break;
        if (!lines[i].trim()) {
          // a blank line continues the list only if an indented line or another item follows
          const next = lines[i + 1];
          if (next !== undefined && (/^\s{2,}\S/.test(next) || (ITEM.exec(next) && ITEM.exec(next)[1].length <= baseIndent + 1))) {
            items[items.length - 1].push("");
            i++;
            continue;
          }
          break;
        }
        const indented = /^\s{2,}/.test(lines[i]);
        if (indented || !startsBlock(lines[i])) {
          items[items.length - 1].push(lines[i].replace(new RegExp(`^ {0,${baseIndent + 4}}`), ""));
          i++;
          continue;
        }
        break;
      }
      for (const itemLines of items) {
        const li = el("li");
        while (itemLines.length > 1 && !itemLines[itemLines.length - 1].trim()) itemLines.pop();
        if (itemLines.includes("")) {
          blocks(itemLines, li); // a loose item: paragraphs
        } else {
          // a tight item: its text inline, then any nested blocks (lists, code)
          let k = 1;
          while (k < itemLines.length && !startsBlock(itemLines[k])) k++;
          inline(itemLines.slice(0, k).join("\n"), li);
          if (k < itemLines.length) blocks(itemLines.slice(k), li);
        }
        list.append(li);
      }
      parent.append(list);
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) && lines[i + 1].includes("-")) {
      const rows = [line, lines[i + 1]];
      i += 2;
      while (i < lines.length && lines[i].includes("|") && lines[i].trim()) rows.push(lines[i++]);
      table(rows, parent);
      continue;
    }
    const para = [line];
    i++;
    while (i < lines.length && lines[i].trim() && !startsBlock(lines[i], lines[i + 1])) para.push(lines[i++]);
    const p = el("p");
    inline(para.join("\n").trim(), p);
    parent.append(p);
  }
}

// Render `text` as Markdown into a new DocumentFragment.
export function renderMarkdown(text) {
  const frag = document.createDocumentFragment();
  blocks(String(text).replace(/\r\n?/g, "\n").split("\n"), frag);
  return frag;
}

// Runs the script of a bertjax view page (argv[2]) in node with a minimal DOM, and prints as JSON
// every text the script put into the page: enough to see that it runs to the end (no exception)
// and what it drew, where no headless browser is installed (test_hostile_analysis.py).
const fs = require("fs");
const page = fs.readFileSync(process.argv[2], "utf8");

function El(tag) {
  return {tag, children: [], attrs: {}, style: {}, textContent: "", value: "", innerHTML: "",
    listeners: {}, _q: {}, classList: {add() {}, remove() {}, toggle() {}},
    setAttribute(k, v) { this.attrs[k] = String(v); }, getAttribute(k) { return this.attrs[k]; },
    appendChild(c) { this.children.push(c); return c; },
    removeChild(c) { this.children = this.children.filter(x => x !== c); return c; },
    get firstChild() { return this.children[0] || null; },
    addEventListener(t, f) { this.listeners[t] = f; },
    querySelector(sel) { return this._q[sel] || (this._q[sel] = El("q:" + sel)); },
    querySelectorAll() { return []; }};
}

const blocks = [...page.matchAll(/<script type="application\/json" id="([^"]+)">([\s\S]*?)<\/script>/g)];
const code = [...page.matchAll(/<script type="text\/javascript">([\s\S]*?)<\/script>/g)].map(m => m[1]);
const root = El("div");
global.document = {
  getElementById(id) { const b = blocks.find(m => m[1] === id); return b ? {textContent: b[2]} : root; },
  createElement: El, createElementNS: (ns, t) => El(t),
};
for (const c of code) eval(c);
const texts = [];
(function walk(n) {
  if (n.textContent !== "") texts.push(String(n.textContent));
  (n.children || []).forEach(walk);
  Object.values(n._q || {}).forEach(walk);
})(root);
console.log(JSON.stringify(texts));

  // Shared by the head, model and neuron views (views.py inlines it into each page's script, so
  // every page stays one self-contained file): the root element, its data and small SVG helpers.
  var root = document.getElementById("__ROOT__");
  var data = JSON.parse(document.getElementById("__ROOT__-data").textContent);
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                "#7f7f7f", "#bcbd22", "#17becf"];

  function color(h) { return COLORS[h % COLORS.length]; }
  function svgNode(name, attrs, text) {
    var node = document.createElementNS(NS, name);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function range(n) { var r = []; for (var i = 0; i < n; i++) r.push(i); return r; }
  function options(select, values, labels) {
    for (var n = 0; n < values.length; n++) {
      var opt = document.createElement("option");
      opt.value = values[n]; opt.textContent = labels ? labels[values[n]] : values[n];
      select.appendChild(opt);
    }
  }

  // The attention diagram of the head view and of the model view's detail: the tokens twice, the
  // queries at x = at.left (right-aligned) and the keys at x = at.right, rows at.row apart from
  // y = at.top. Hovering a token sets state.hover / state.side and calls redraw(); `draw(heads,
  // damp)` then draws a line from query i to key j for each weight >= 0.01 of each
  // {attn: [S, S], color} of heads (only the hovered token's lines while one is hovered), with
  // opacity weight / damp, and bolds the hovered token.
  function attentionDiagram(svg, at, state, redraw) {
    var lines = svgNode("g", {}), texts = [];
    svg.appendChild(lines);
    function tokenText(i, x, anchor, side) {
      var isB = data.sentence_b_start !== null && i >= data.sentence_b_start;
      var t = svgNode("text", {x: x, y: at.top + at.row * i + at.row / 2 + 4, "text-anchor": anchor,
                               fill: isB ? "#444488" : "#000", style: "cursor: default"},
                      data.tokens[i]);
      t.addEventListener("mouseenter", function () { state.hover = i; state.side = side; redraw(); });
      t.addEventListener("mouseleave", function () {
        state.hover = null; state.side = null; redraw();
      });
      texts.push({node: t, i: i, side: side});
      svg.appendChild(t);
    }
    for (var i = 0; i < data.tokens.length; i++) {
      tokenText(i, at.left, "end", "left");
      tokenText(i, at.right, "start", "right");
    }
    function draw(heads, damp) {
      while (lines.firstChild) lines.removeChild(lines.firstChild);
      var S = data.tokens.length;
      for (var k = 0; k < heads.length; k++) {
        var a = heads[k].attn;
        for (var i = 0; i < S; i++) {
          for (var j = 0; j < S; j++) {
            if (state.hover !== null && ((state.side === "left" && i !== state.hover) ||
                                         (state.side === "right" && j !== state.hover))) continue;
            var w = a[i][j];
            if (w < 0.01) continue;
            lines.appendChild(svgNode("line", {x1: at.left + 8, y1: at.top + at.row * i + at.row / 2,
                                               x2: at.right - 8, y2: at.top + at.row * j + at.row / 2,
                                               stroke: heads[k].color, "stroke-width": 2,
                                               "stroke-opacity": Math.min(1, w / damp)}));
          }
        }
      }
      for (var n = 0; n < texts.length; n++) {
        var bold = state.hover === texts[n].i && state.side === texts[n].side;
        texts[n].node.setAttribute("font-weight", bold ? "bold" : "normal");
      }
    }
    return draw;
  }

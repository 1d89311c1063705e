"use strict";
// hnsel report: the map (plotly.js), the grid and the cards, sorting, search, filters, and accept/reject decisions kept in
// this browser's local storage per round. Every value from the data goes into the page as text (textContent, never HTML).
(function () {
  var D = JSON.parse(document.getElementById("report-data").textContent);
  var COLOURS = {hardneg: "#d62728", score: "#d62728", density: "#e377c2", coverage: "#2ca02c", coreset: "#2ca02c",
                 diverse: "#9467bd", random: "#ff7f0e", fill: "#7f7f7f", unknown: "#444444"};
  var COVERAGE = {coverage: true, coreset: true};
  var CHUNK = {grid: 300, cards: 40};  // items rendered at once; more as the page scrolls to the end
  var imageSide = D.modality === "image", picks = D.picks, unit = imageSide ? "caption" : "image";
  picks.forEach(function (p, i) { p.i = i; });
  var S = {view: imageSide ? "grid" : "cards", sort: "rank", q: "", reason: "", status: "", decision: "", lasso: null};
  var shown = picks, rendered = 0;

  function label(why) { return why === "score" && D.strategy === "hardneg" ? "hardneg" : why; }
  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fmt(x, digits) { return (x === null || x === undefined) ? "n/a" : Number(x).toFixed(digits === undefined ? 4 : digits); }
  function violations(p) { return p.nv !== undefined ? p.nv : p.v; }
  function hardnegToo(p) { return !COVERAGE[p.why] || (p.nv !== undefined && p.nv > 0); }

  // ---- decisions: id -> "a" | "r", in localStorage under this round's key (a Map: ids are arbitrary strings)
  var dec = new Map();
  try { (JSON.parse(localStorage.getItem(D.key) || "[]") || []).forEach(function (e) { if (e[1] === "a" || e[1] === "r") dec.set(String(e[0]), e[1]); }); }
  catch (err) { dec = new Map(); }
  var inRound = new Map(picks.map(function (p) { return [p.id, p]; }));
  dec.forEach(function (v, id) { if (!inRound.has(id)) dec.delete(id); });
  function saveDecisions() {
    try { localStorage.setItem(D.key, JSON.stringify(Array.from(dec.entries()))); } catch (err) { /* storage full or off */ }
    updateCounts();
  }
  function decide(ids, value) {
    ids.forEach(function (id) { if (value) dec.set(id, value); else dec.delete(id); });
    saveDecisions();
    document.querySelectorAll(".tile, .card").forEach(function (n) { paintDecision(n, dec.get(n.dataset.id)); });
  }
  function paintDecision(node, value) {
    node.classList.toggle("accepted", value === "a");
    node.classList.toggle("rejected", value === "r");
  }
  function decisionButtons(p) {
    var box = el("span", "decide");
    [["a", "\u2713", "accept"], ["r", "\u2717", "reject"]].forEach(function (d) {
      var b = el("button", "dec-" + d[0], d[1]);
      b.type = "button"; b.title = d[2] + " " + p.id; b.setAttribute("aria-label", d[2]);
      b.addEventListener("click", function (ev) { ev.stopPropagation(); decide([p.id], dec.get(p.id) === d[0] ? null : d[0]); });
      box.appendChild(b);
    });
    return box;
  }
  function decisionsFile() {
    var accepted = [], rejected = [];
    picks.forEach(function (p) { var v = dec.get(p.id); if (v === "a") accepted.push(p.id); else if (v === "r") rejected.push(p.id); });
    return {round: D.round, accepted: accepted, rejected: rejected};
  }
  function download() {
    var blob = new Blob([JSON.stringify(decisionsFile(), null, 1) + "\n"], {type: "application/json"});
    var a = el("a");
    a.href = URL.createObjectURL(blob);
    a.download = "round-" + String(D.round).padStart(4, "0") + "-decisions.json";
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(function () { URL.revokeObjectURL(a.href); }, 5000);
  }
  function updateCounts() {
    var f = decisionsFile();
    $("decision-info").textContent = f.accepted.length + " accepted, " + f.rejected.length + " rejected of " + picks.length;
  }

  // ---- one pick's views
  function thumb(id, cls) {
    var t = D.img[id];
    if (typeof t === "string") {
      var i = el("img", cls);
      i.src = t; i.loading = "lazy"; i.decoding = "async"; i.alt = id; i.title = id + (D.uri[id] ? "\n" + D.uri[id] : "");
      return i;
    }
    var p = el("div", "ph " + cls, "no image");
    p.title = id + ": " + ((t && t.error) ? t.error : "no image");
    return p;
  }
  function caption(id, cls) {
    var box = el("div", "caption-text " + (cls || ""), D.txt[id] !== undefined ? D.txt[id] : id);
    box.title = id;
    return box;
  }
  function sample(id, small) { return imageSide ? thumb(id, small ? "small" : "thumb") : caption(id, small ? "" : "pick-text"); }
  function anchorView(id) { return imageSide ? caption(id) : thumb(id, "small"); }
  function badge(why) { var b = el("span", "badge", label(why)); b.style.background = COLOURS[why] || "#444"; return b; }

  function evidenceTable(p) {
    var t = el("table", "evidence"), head = el("tr");
    [imageSide ? "violated paired caption" : "violated paired image", "similarity > threshold", imageSide ? "its image" : "its caption",
     "sets the threshold"].forEach(function (h) { head.appendChild(el("th", null, h)); });
    t.appendChild(head);
    p.ev.forEach(function (e) {
      var tr = el("tr", "ev");
      tr.dataset.anchor = e[0];
      var a = el("td"); a.appendChild(anchorView(e[0])); a.appendChild(el("div", "lbl", (imageSide ? "caption " : "image ") + e[0]));
      var n = el("td", "num");
      n.appendChild(document.createTextNode("s " + fmt(e[1]) + " > \u03be " + fmt(e[2])));
      n.appendChild(el("br")); n.appendChild(el("b", null, "+" + fmt(e[1] - e[2])));
      tr.appendChild(a); tr.appendChild(n);
      var own = el("td", "img"); if (e[4] !== null) { own.appendChild(sample(e[4], true)); own.appendChild(el("div", "lbl", e[4])); }
      var setter = el("td", "img"); if (e[3] !== null) { setter.appendChild(sample(e[3], true)); setter.appendChild(el("div", "lbl", "confused with " + e[3])); }
      tr.appendChild(own); tr.appendChild(setter);
      t.appendChild(tr);
    });
    return t;
  }
  function facts(p) {
    var out = [];
    if (COVERAGE[p.why]) out.push("covers the pool: its score " + fmt(p.s) + " is its distance to the nearest centre (a paired sample or an earlier pick)");
    if (p.nv === 0 && !COVERAGE[p.why]) out.push("violates no paired " + unit + " now");
    else if (p.nv > 0) out.push((COVERAGE[p.why] ? "also a hard negative: " : "") + "violates " + p.nv + " paired " + unit + (p.nv === 1 ? "" : "s") +
                               " now (summed surplus " + fmt(p.sur, 4) + ")");
    if (p.near) out.push("nearest paired sample at cosine distance " + fmt(p.near[1]));
    if (p.nv === undefined) out.push("not in the store now: no evidence");
    return out.join(" \u00b7 ");
  }
  function card(p) {
    var c = el("article", "card");
    c.dataset.id = p.id; c.dataset.rank = p.r; c.dataset.reason = p.why;
    var head = el("div", "head");
    head.appendChild(el("span", "rank", "#" + p.r));
    head.appendChild(badge(p.why));
    var v = hardnegToo(p) && p.v !== null && p.v !== undefined ? " \u00b7 " + p.v + " violations" : "";
    head.appendChild(el("span", "score", "score " + fmt(p.s) + v));
    head.appendChild(el("span", "status", p.st));
    head.appendChild(el("span", "pid", p.id));
    head.appendChild(decisionButtons(p));
    c.appendChild(head);
    var media = el("div", "media"); media.appendChild(sample(p.id, false)); c.appendChild(media);
    var why = el("div", "why");
    why.appendChild(el("div", "facts", facts(p)));
    if (p.ev && p.ev.length && hardnegToo(p)) why.appendChild(evidenceTable(p));
    if (p.near && (!p.ev || !p.ev.length || COVERAGE[p.why])) {
      var near = el("div", "near"); near.appendChild(el("div", "lbl", "nearest paired: " + p.near[0] + " (distance " + fmt(p.near[1]) + ")"));
      near.appendChild(sample(p.near[0], true)); why.appendChild(near);
    }
    c.appendChild(why);
    paintDecision(c, dec.get(p.id));
    return c;
  }
  function tile(p) {
    var t = el("div", "tile");
    t.dataset.id = p.id; t.dataset.rank = p.r; t.dataset.reason = p.why; t.tabIndex = 0;
    t.title = "#" + p.r + " " + p.id + " \u00b7 " + label(p.why) + " \u00b7 score " + fmt(p.s);
    t.appendChild(imageSide ? thumb(p.id, "tthumb") : el("div", "ttext", D.txt[p.id] !== undefined ? D.txt[p.id] : p.id));
    var bar = el("div", "tbar"); bar.style.background = COLOURS[p.why] || "#444";
    bar.appendChild(el("span", "trank", "#" + p.r)); bar.appendChild(decisionButtons(p));
    t.appendChild(bar);
    t.addEventListener("click", function () { openDetail(p); });
    t.addEventListener("keydown", function (ev) { if (ev.key === "Enter") openDetail(p); });
    paintDecision(t, dec.get(p.id));
    return t;
  }
  function openDetail(p) {
    $("detail-body").replaceChildren(card(p));
    $("detail").hidden = false;
    $("detail").dataset.id = p.id;
  }

  // ---- filtering, sorting, rendering
  var hay = null;
  function haystack(p) {
    if (!hay) hay = new Array(picks.length);
    if (hay[p.i] === undefined) {
      var parts = [p.id, D.txt[p.id] || ""];
      (p.ev || []).forEach(function (e) { parts.push(e[0], D.txt[e[0]] || ""); });
      hay[p.i] = parts.join("\n").toLowerCase();
    }
    return hay[p.i];
  }
  function keyOf(p) {
    if (S.sort === "score") return p.s === null || p.s === undefined ? Infinity : -p.s;
    if (S.sort === "violations") { var v = violations(p); return v === null || v === undefined ? Infinity : -v; }
    return p.r;
  }
  function refilter() {
    var q = S.q.toLowerCase();
    shown = picks.filter(function (p) {
      return (!S.reason || p.why === S.reason) && (!S.status || p.st === S.status) && (!S.lasso || S.lasso.has(p.i)) &&
        (!S.decision || (dec.get(p.id) || "u") === S.decision) && (!q || haystack(p).indexOf(q) >= 0);
    });
    if (S.sort !== "rank") shown = shown.map(function (p) { return [keyOf(p), p.r, p]; })
      .sort(function (a, b) { return a[0] - b[0] || a[1] - b[1]; }).map(function (x) { return x[2]; });
    render();
  }
  function render() {
    rendered = 0;
    $("grid").hidden = S.view !== "grid"; $("cards").hidden = S.view !== "cards";
    $("view-grid").classList.toggle("on", S.view === "grid"); $("view-cards").classList.toggle("on", S.view === "cards");
    $(S.view).replaceChildren();
    $("grid" === S.view ? "cards" : "grid").replaceChildren();
    more();
    $("picks").dataset.total = String(picks.length);
    $("picks").dataset.shown = String(shown.length);
    $("shown-info").textContent = shown.length + " of " + picks.length + " picks shown";
  }
  function more() {
    var box = $(S.view), frag = document.createDocumentFragment(), upto = Math.min(shown.length, rendered + CHUNK[S.view]);
    for (var k = rendered; k < upto; k++) frag.appendChild(S.view === "grid" ? tile(shown[k]) : card(shown[k]));
    box.appendChild(frag);
    rendered = upto;
    if (!shown.length) box.appendChild(el("div", "empty", "no pick matches"));
    $("more").textContent = rendered < shown.length ? "showing " + rendered + " of " + shown.length + "; scroll for more" : "";
  }
  new IntersectionObserver(function (entries) {
    if (entries.some(function (e) { return e.isIntersecting; }) && rendered < shown.length) more();
  }, {rootMargin: "1200px"}).observe($("more"));

  function fillSelect(id, counts, text) {
    var select = $(id);
    Object.keys(counts).sort().forEach(function (k) { var o = el("option", null, text(k) + " (" + counts[k] + ")"); o.value = k; select.appendChild(o); });
  }
  function tally(key) { var c = {}; picks.forEach(function (p) { c[p[key]] = (c[p[key]] || 0) + 1; }); return c; }
  fillSelect("reason-filter", tally("why"), label);
  fillSelect("status-filter", tally("st"), function (k) { return k; });
  [["sort", "sort"], ["reason-filter", "reason"], ["status-filter", "status"], ["decision-filter", "decision"]].forEach(function (c) {
    $(c[0]).addEventListener("change", function (ev) { S[c[1]] = ev.target.value; refilter(); });
  });
  $("search").addEventListener("input", function (ev) { S.q = ev.target.value.trim(); refilter(); });
  $("view-grid").addEventListener("click", function () { S.view = "grid"; render(); });
  $("view-cards").addEventListener("click", function () { S.view = "cards"; render(); });
  $("accept-shown").addEventListener("click", function () { decide(shown.map(function (p) { return p.id; }), "a"); });
  $("reject-shown").addEventListener("click", function () { decide(shown.map(function (p) { return p.id; }), "r"); });
  $("clear-shown").addEventListener("click", function () { decide(shown.map(function (p) { return p.id; }), null); });
  $("download").addEventListener("click", download);
  $("detail-close").addEventListener("click", function () { $("detail").hidden = true; });
  document.addEventListener("keydown", function (ev) { if (ev.key === "Escape") $("detail").hidden = true; });
  $("lasso-clear").addEventListener("click", function () { clearLasso(); });

  // ---- the map
  var traces = [], meta = [];
  function mapTraces() {
    var m = D.map;
    if (!m || !m.layers) return;
    var type = D.webgl && webgl() ? "scattergl" : "scatter";  // WebGL past a few thousand points (page.WEBGL_POINTS): SVG slows down
    var style = {paired: ["#1f77b4", 4, 0.5, true], pool: ["#9aa3ad", 4, 0.45, true], round: ["#8c564b", 5, 0.8, "legendonly"]};
    m.layers.forEach(function (l) {
      var s = style[l.kind];
      traces.push({type: type, mode: "markers", name: l.name + " (" + l.ids.length + ")", x: l.x, y: l.y, visible: s[3], hoverinfo: "none",
                   marker: {color: s[0], size: s[1], opacity: s[2]}});
      meta.push({ids: l.ids, layer: l.kind});
    });
    var groups = {};
    picks.forEach(function (p) { if (p.xy) (groups[p.why] = groups[p.why] || []).push(p.i); });
    Object.keys(groups).sort().forEach(function (why) {
      var idx = groups[why];
      traces.push({type: type, mode: "markers", name: "picks: " + label(why) + " (" + idx.length + ")", hoverinfo: "none",
                   x: idx.map(function (i) { return picks[i].xy[0]; }), y: idx.map(function (i) { return picks[i].xy[1]; }),
                   marker: {color: COLOURS[why] || "#444", size: 7, opacity: 0.9, line: {width: 0.5, color: "#fff"}}});
      meta.push({picks: idx, layer: "picks"});
    });
  }
  function webgl() {
    try { var c = document.createElement("canvas"); return !!(c.getContext("webgl") || c.getContext("experimental-webgl")); }
    catch (err) { return false; }
  }
  function hoverBox(pt) {
    var info = meta[pt.curveNumber], box = $("hover-box"), i = pt.pointNumber, id, lines = [];
    if (!info) return;
    if (info.picks) {
      var p = picks[info.picks[i]]; id = p.id;
      lines.push("#" + p.r + " \u00b7 " + label(p.why) + " \u00b7 score " + fmt(p.s));
      if (imageSide && p.ev && p.ev.length) lines.push("violates: " + (D.txt[p.ev[0][0]] || p.ev[0][0]));
    } else { id = info.ids[i]; lines.push(info.layer === "round" ? "an earlier round's pick" : info.layer); }
    var body = [el("div", "hid", id)];
    if (imageSide) body.unshift(thumb(id, "hthumb"));
    if (D.txt[id] !== undefined) body.push(el("div", "htext", D.txt[id]));
    lines.forEach(function (t) { body.push(el("div", "hline", t)); });
    box.replaceChildren.apply(box, body);
    box.dataset.id = id;
    var rect = $("map-plot").getBoundingClientRect(), e = pt.event || {};
    box.style.left = Math.min(rect.width - 190, Math.max(0, (e.clientX || rect.left) - rect.left + 14)) + "px";
    box.style.top = Math.max(0, (e.clientY || rect.top) - rect.top + 14) + "px";
    box.hidden = false;
  }
  var timings = window.hnselTimings = {};  // for benchmarks/report_page.py: page ready, last map selection applied
  function onSelected(ev) {
    if (!ev || !ev.points) return;
    var started = performance.now();
    var chosen = new Set();
    ev.points.forEach(function (pt) { var info = meta[pt.curveNumber]; if (info && info.picks) chosen.add(info.picks[pt.pointNumber]); });
    S.lasso = chosen;
    $("lasso-chip").hidden = false;
    $("lasso-info").textContent = "map selection: " + chosen.size + " picks (" + ev.points.length + " points)";
    refilter();
    timings.selected = {at: started, ms: performance.now() - started, picks: chosen.size};
  }
  function clearLasso() {
    S.lasso = null; $("lasso-chip").hidden = true;
    if (window.Plotly && traces.length) Plotly.restyle("map-plot", {selectedpoints: [null]});
    refilter();
  }
  function drawMap() {
    mapTraces();
    if (!window.Plotly || !traces.length) { $("map-plot").textContent = "no map"; return Promise.resolve(); }
    var layout = {dragmode: "lasso", hovermode: "closest", margin: {l: 10, r: 10, t: 10, b: 10}, height: 460, uirevision: "map",
                  legend: {orientation: "h", y: -0.02}, xaxis: {showticklabels: false, zeroline: false, showgrid: false},
                  yaxis: {showticklabels: false, zeroline: false, showgrid: false}, plot_bgcolor: "#fff", paper_bgcolor: "#fff"};
    var config = {displaylogo: false, responsive: true, scrollZoom: true};
    return Plotly.newPlot("map-plot", traces, layout, config).then(function (gd) {
      if (!gd.querySelector(".no-webgl")) return gd;
      traces.forEach(function (t) { t.type = "scatter"; });  // plotly could not start WebGL here: SVG, slower but working
      return Plotly.newPlot(gd, traces, layout, config);
    }).then(function (gd) {
      gd.dataset.type = traces[0].type;
      gd.on("plotly_hover", function (ev) { if (ev && ev.points && ev.points.length) hoverBox(Object.assign({event: ev.event}, ev.points[0])); });
      gd.on("plotly_unhover", function () { $("hover-box").hidden = true; });
      gd.on("plotly_selected", onSelected);
      gd.on("plotly_deselect", function () { S.lasso = null; $("lasso-chip").hidden = true; refilter(); });
    });
  }
  function drawCharts() {
    if (!window.Plotly) return Promise.resolve();
    var groups = {};
    picks.forEach(function (p) { if (p.s !== null && p.s !== undefined) (groups[p.why] = groups[p.why] || []).push(p.s); });
    var hist = Object.keys(groups).sort().map(function (why) {
      return {type: "histogram", name: label(why) + (COVERAGE[why] ? " (distance to the nearest centre)" : "") + " score", x: groups[why],
              opacity: 0.65, marker: {color: COLOURS[why] || "#444"}};
    });
    var done = [];
    if (hist.length) done.push(Plotly.newPlot("hist-plot", hist, {barmode: "overlay", height: 240, margin: {l: 40, r: 10, t: 10, b: 40},
      xaxis: {title: {text: "score"}}, yaxis: {title: {text: "picks"}}}, {displaylogo: false, responsive: true}));
    else $("hist-plot").textContent = "no scores recorded";
    if (D.sim && $("sim-plot")) {
      var curves = Object.keys(D.sim.curves).sort().map(function (name) {
        var rows = D.sim.curves[name];
        return {type: "scatter", mode: "lines+markers", name: name, x: rows.map(function (r) { return r.paired; }),
                y: rows.map(function (r) { return r.rsum_mean; }), error_y: {type: "data", array: rows.map(function (r) { return r.rsum_std; })}};
      });
      done.push(Plotly.newPlot("sim-plot", curves, {height: 320, margin: {l: 50, r: 10, t: 10, b: 40}, xaxis: {title: {text: "paired images"}},
        yaxis: {title: {text: "R-sum"}}}, {displaylogo: false, responsive: true}));
    }
    return Promise.all(done);
  }

  document.querySelectorAll(".badge[data-reason]").forEach(function (b) { b.style.background = COLOURS[b.dataset.reason] || "#444"; b.textContent = label(b.dataset.reason); });
  updateCounts();
  refilter();
  Promise.all([drawMap(), drawCharts()]).then(function () {
    timings.ready = performance.now();
    document.body.dataset.ready = "1";
  }, function (err) {
    document.body.dataset.ready = "error: " + err;
  });
})();

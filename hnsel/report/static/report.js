"use strict";
(function () {
  var D = JSON.parse(document.getElementById("report-data").textContent);
  var PAGE = 100;
  var COLOURS = {hardneg: "#d62728", score: "#d62728", density: "#d62728", coverage: "#2ca02c", coreset: "#2ca02c",
                 diverse: "#9467bd", random: "#ff7f0e", fill: "#7f7f7f", unknown: "#444444"};
  var imageSide = D.modality === "image";
  // hardneg marks its merit picks "score": they are its hard negatives
  function label(why) { return why === "score" && D.strategy === "hardneg" ? "hardneg" : why; }
  var picks = D.picks, shown = picks, page = 0;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function fmt(x, digits) { return (x === null || x === undefined) ? "n/a" : Number(x).toFixed(digits === undefined ? 4 : digits); }
  function thumb(id, cls) {
    var t = D.img[id];
    if (typeof t === "string") {
      var i = el("img", cls);
      i.src = t; i.loading = "lazy"; i.decoding = "async"; i.alt = id; i.title = id + (D.uri[id] ? "\n" + D.uri[id] : "");
      return i;
    }
    var why = (t && t.error) ? t.error : "no image";
    var p = el("div", "ph " + cls, "no image");
    p.title = id + ": " + why;
    return p;
  }
  function caption(id, cls) {
    var box = el("div", "caption-text " + (cls || ""), D.txt[id] !== undefined ? D.txt[id] : id);
    box.title = id;
    return box;
  }
  function sample(id, small) { return imageSide ? thumb(id, small ? "small" : "thumb") : caption(id, small ? "" : "pick-text"); }
  function anchorView(id) { return imageSide ? caption(id) : thumb(id, "small"); }

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

  function card(p) {
    var c = el("article", "card");
    c.dataset.id = p.id; c.dataset.rank = p.r; c.dataset.reason = p.why;
    var head = el("div", "head");
    head.appendChild(el("span", "rank", "#" + p.r));
    var badge = el("span", "badge", label(p.why)); badge.style.background = COLOURS[p.why] || "#444"; head.appendChild(badge);
    head.appendChild(el("span", "score", "score " + fmt(p.s) + (p.v !== null && p.v !== undefined ? " \u00b7 " + p.v + " violations" : "")));
    head.appendChild(el("span", "status", p.st));
    head.appendChild(el("span", "pid", p.id));
    c.appendChild(head);
    var media = el("div", "media"); media.appendChild(sample(p.id, false)); c.appendChild(media);
    var why = el("div", "why");
    var facts = [];
    var unit = imageSide ? "caption" : "image";
    if (p.nv === 0) facts.push("violates no paired " + unit + " now");
    else if (p.nv !== undefined) facts.push("violates " + p.nv + " paired " + unit + (p.nv === 1 ? "" : "s") + " now (summed surplus " + fmt(p.sur, 4) + ")");
    if (p.near) facts.push("nearest paired sample at cosine distance " + fmt(p.near[1]));
    if (p.nv === undefined) facts.push("not in the store now: no evidence");
    why.appendChild(el("div", "facts", facts.join(" \u00b7 ")));
    if (p.ev && p.ev.length) why.appendChild(evidenceTable(p));
    if (p.near && (!p.ev || !p.ev.length || p.why === "coverage" || p.why === "coreset")) {
      var near = el("div", "near"); near.appendChild(el("div", "lbl", "nearest paired: " + p.near[0] + " (distance " + fmt(p.near[1]) + ")"));
      near.appendChild(sample(p.near[0], true)); why.appendChild(near);
    }
    c.appendChild(why);
    return c;
  }

  function render() {
    var pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(Math.max(page, 0), pages - 1);
    var box = document.getElementById("cards");
    var frag = document.createDocumentFragment();
    shown.slice(page * PAGE, (page + 1) * PAGE).forEach(function (p) { frag.appendChild(card(p)); });
    box.replaceChildren(frag);
    if (!shown.length) box.appendChild(el("div", "empty", "no pick matches"));
    var info = "page " + (page + 1) + " of " + pages + " (" + shown.length + " of " + picks.length + " picks)";
    document.querySelectorAll(".page-info").forEach(function (s) { s.textContent = info; });
    document.querySelectorAll(".prev").forEach(function (b) { b.disabled = page === 0; });
    document.querySelectorAll(".next").forEach(function (b) { b.disabled = page >= pages - 1; });
    document.getElementById("picks").dataset.total = String(picks.length);
  }
  function refilter() {
    var r = document.getElementById("reason-filter").value, q = document.getElementById("id-filter").value.trim().toLowerCase();
    shown = picks.filter(function (p) { return (!r || p.why === r) && (!q || p.id.toLowerCase().indexOf(q) >= 0); });
    page = 0; render();
  }
  var reasons = {};
  picks.forEach(function (p) { reasons[p.why] = (reasons[p.why] || 0) + 1; });
  var select = document.getElementById("reason-filter");
  Object.keys(reasons).sort().forEach(function (r) { var o = el("option", null, label(r) + " (" + reasons[r] + ")"); o.value = r; select.appendChild(o); });
  select.addEventListener("change", refilter);
  document.getElementById("id-filter").addEventListener("input", refilter);
  document.querySelectorAll(".prev").forEach(function (b) { b.addEventListener("click", function () { page -= 1; render(); document.getElementById("picks").scrollIntoView(); }); });
  document.querySelectorAll(".next").forEach(function (b) { b.addEventListener("click", function () { page += 1; render(); document.getElementById("picks").scrollIntoView(); }); });

  function drawMap() {
    var m = D.map, canvas = document.getElementById("map-canvas");
    if (!m || !m.paired || !canvas.getContext) return;
    var ratio = window.devicePixelRatio || 1, w = canvas.width, h = canvas.height, pad = 12;
    canvas.style.width = w + "px"; canvas.width = w * ratio; canvas.height = h * ratio;
    var ctx = canvas.getContext("2d"); ctx.scale(ratio, ratio);
    function dot(p, colour, r) { ctx.fillStyle = colour; ctx.beginPath(); ctx.arc(pad + p[0] * (w - 2 * pad), pad + (1 - p[1]) * (h - 2 * pad), r, 0, 6.2832); ctx.fill(); }
    ctx.globalAlpha = 0.55; m.pool.forEach(function (p) { dot(p, "#9aa3ad", 2); });
    ctx.globalAlpha = 0.8; m.paired.forEach(function (p) { dot(p, "#1f77b4", 2.2); });
    ctx.globalAlpha = 0.9; m.picks.forEach(function (p) { dot(p, COLOURS[picks[p[2]].why] || "#444", 3); });
    var legend = document.getElementById("map-legend");
    var items = [["pool (unpaired)", "#9aa3ad"], ["paired", "#1f77b4"]];
    Object.keys(reasons).sort().forEach(function (r) { items.push(["picks: " + label(r), COLOURS[r] || "#444"]); });
    items.forEach(function (it) { var s = el("span"); var i = el("i"); i.style.background = it[1]; s.appendChild(i); s.appendChild(document.createTextNode(it[0])); legend.appendChild(s); });
  }
  render();
  drawMap();
  document.body.dataset.ready = "1";
})();

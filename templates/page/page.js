// graphgen's learner page. All data comes from the JSON block the compiler wrote; the
// pictures are Graphviz SVGs kept in <template> elements and swapped in on demand.
// Names are inserted with textContent only, never as HTML.
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("data").textContent);
  const picture = document.getElementById("picture");
  const stepBox = document.getElementById("step");
  const tooltip = document.getElementById("tooltip");
  let view = null;
  let current = 0;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // A number shown with 6 significant digits; data-v keeps it in full.
  function fmt(v) {
    if (typeof v === "string") return v;
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1e-3 && a < 1e5) return String(Number(v.toPrecision(6)));
    return v.toExponential(5).replace(/\.?0+e/, "e");
  }
  function num(v, cls) {
    const s = el("span", "num" + (cls ? " " + cls : ""), fmt(v));
    s.dataset.v = String(v);
    s.title = String(v);
    return s;
  }
  // An array: every entry when it is small, else its shape and Frobenius norm.
  function arr(a, role) {
    const box = el("span", "arr");
    box.dataset.role = role;
    if (!a) { box.textContent = "(not computed)"; return box; }
    box.dataset.shape = JSON.stringify(a.shape);
    if (a.entries) {
      box.append(a.shape.length ? "[" : "");
      a.entries.forEach((v, i) => {
        if (i) box.append(", ");
        box.append(num(v, "entry"));
      });
      box.append(a.shape.length ? "]" : "");
      if (a.shape.length > 1) box.append(el("span", "muted", " (" + a.shape.join("×") + ", row-major)"));
    } else {
      box.append(el("span", "muted", a.shape.join("×") + ", ‖·‖ = "));
      box.append(num(a.norm, "norm"));
    }
    return box;
  }

  // ------------------------------------------------------------------ the pictures
  function svgNode(id) {
    return picture.querySelector('g[id="' + id + '"]');
  }
  function showView(key) {
    if (view === key) return;
    const t = document.getElementById("view-" + key);
    if (!t) return;
    picture.replaceChildren(t.content.cloneNode(true));
    // a picture a little wider than the pane is shrunk to fit; a wide one keeps its
    // size (readable labels) and scrolls
    picture.classList.remove("fit");
    const svg = picture.querySelector("svg");
    if (svg && svg.getBoundingClientRect().width <= 2 * picture.clientWidth) {
      picture.classList.add("fit");
    }
    view = key;
    picture.querySelectorAll("g.node.block").forEach((g) => {
      g.addEventListener("click", () => { showView(g.id); mark(); });
    });
    picture.querySelectorAll("g.cluster.open").forEach((g) => {
      g.addEventListener("click", (ev) => {
        if (ev.target.closest("g.node")) return;
        showView("top"); mark();
      });
    });
    picture.querySelectorAll("g.node.gg").forEach((g) => {
      g.addEventListener("mouseenter", (ev) => hover(g.id, ev));
      g.addEventListener("mousemove", place);
      g.addEventListener("mouseleave", () => { tooltip.hidden = true; });
      // Graphviz's own <title> tooltip would hide ours
      g.querySelectorAll("title").forEach((t) => t.remove());
      g.querySelectorAll("a").forEach((a) => a.removeAttribute("xlink:title"));
    });
    document.body.dataset.view = key;
  }
  // where node `id` is drawn in the current view: itself, or its collapsed block
  function drawn(id) {
    return svgNode(id) || (DATA.nodes[id] && DATA.nodes[id].block && svgNode(DATA.nodes[id].block));
  }
  function mark() {
    picture.querySelectorAll("g.current, g.succ").forEach((g) => g.classList.remove("current", "succ"));
    const s = DATA.steps[current];
    if (!s) return;
    for (const t of s.terms) {
      const g = drawn(t.succ);
      if (g) g.classList.add("succ");
    }
    const g = drawn(s.node);
    if (g) {
      g.classList.remove("succ");
      g.classList.add("current");
      if (g.scrollIntoView) g.scrollIntoView({ block: "nearest", inline: "nearest" });
    }
  }

  // ------------------------------------------------------------------ hovering
  function place(ev) {
    tooltip.style.left = Math.min(ev.clientX + 14, window.innerWidth - 540) + "px";
    tooltip.style.top = ev.clientY + 14 + "px";
  }
  function hover(id, ev) {
    const n = DATA.nodes[id];
    if (!n) return;
    tooltip.replaceChildren();
    tooltip.dataset.node = id;
    tooltip.append(el("b", "", n.name), " ", el("span", "muted", (n.op || n.kind) + " " + n.shape));
    if (n.path) {
      const many = n.path.paths !== "1";
      n.path.list.forEach((p, i) => {
        tooltip.append(el("div", "muted route", (many ? "path " + (i + 1) + ": " : "the only path: ") + p.route));
        tooltip.append(el("div", "formula path", p.product));
      });
      if (n.path.sum) {
        tooltip.append(el("div", "muted", "The gradient is the sum over the paths:"));
        tooltip.append(el("div", "formula path-sum", n.path.sum));
      } else if (many) {
        tooltip.append(el("div", "muted", "… one of " + n.path.paths + " paths; the gradient is the sum over all of them."));
      }
    }
    if (n.value) {
      const d = el("div", "", "‖" + n.name + "‖ = ");
      d.append(num(n.value.norm, "value-norm"));
      tooltip.append(d);
    }
    if (n.grad) {
      const d = el("div", "", "‖∂J/∂" + n.name + "‖ = ");
      d.append(num(n.grad.norm, "grad-norm"));
      tooltip.append(d);
    }
    tooltip.hidden = false;
    place(ev);
  }

  // ------------------------------------------------------------------ the steps
  function render() {
    const s = DATA.steps[current];
    document.getElementById("counter").textContent = "step " + (current + 1) + " / " + DATA.steps.length;
    stepBox.replaceChildren();
    if (!s) return;
    const n = DATA.nodes[s.node];
    if (n.block && view !== n.block) showView(n.block);
    if (!n.block && view !== "top" && !svgNode(s.node)) showView("top");
    stepBox.dataset.node = s.node;
    stepBox.append(el("h2", "", s.bar + "  (" + s.code_name + ")"));
    if (s.seed) {
      stepBox.append(el("p", "", "The loss is where backprop starts: ∂J/∂J = 1."));
    } else {
      const lhs = s.bar + " = ";
      const sum = s.terms.map((t) => t.succ_bar + "·" + t.factor).join(" + ");
      stepBox.append(el("div", "formula sum", lhs + sum));
      stepBox.append(el("p", "muted", s.terms.length > 1
        ? "The sum over the " + s.terms.length + " successors of " + n.name + ", one term each:"
        : n.name + " has one successor, so its adjoint is that one term:"));
      const table = el("table", "terms");
      const head = el("tr");
      ["successor", "its adjoint", "local derivative", "term"].forEach((h) => head.append(el("th", "", h)));
      table.append(head);
      for (const t of s.terms) {
        const tr = el("tr", "term");
        tr.dataset.succ = t.succ;
        tr.append(el("td", "", DATA.nodes[t.succ].name));
        const a = el("td");
        a.append(el("div", "muted", t.succ_bar + " ="), arr(t.succ_value, "succ"));
        tr.append(a);
        const l = el("td", "local");
        (t.local.length ? t.local : [t.factor]).forEach((x) => l.append(el("div", "", x)));
        tr.append(l);
        const v = el("td");
        v.append(arr(t.value, "term"));
        tr.append(v);
        table.append(tr);
      }
      stepBox.append(table);
    }
    const tot = el("div", "total");
    tot.append(el("b", "", s.bar + " = "), arr(s.value, "total"));
    stepBox.append(tot);
    if (s.code.length) {
      stepBox.append(el("p", "muted", "The generated " + DATA.function + "() computes it here:"));
      stepBox.append(el("pre", "code", s.code.join("\n")));
    } else if (!s.seed) {
      stepBox.append(el("p", "muted code-note", "No line of its own: " + (s.note ||
        "the generated code uses the array that holds " + (s.terms[0] ? s.terms[0].succ_bar : "it")) + "."));
    }
    mark();
  }
  function go(i) {
    current = Math.max(0, Math.min(DATA.steps.length - 1, i));
    render();
  }

  document.getElementById("first").onclick = () => go(0);
  document.getElementById("prev").onclick = () => go(current - 1);
  document.getElementById("next").onclick = () => go(current + 1);
  document.getElementById("last").onclick = () => go(DATA.steps.length - 1);
  document.getElementById("top").onclick = () => { showView("top"); mark(); };
  document.getElementById("gradcolor").onchange = (ev) => {
    document.body.classList.toggle("gradcolor", ev.target.checked);
    document.getElementById("legend").hidden = !ev.target.checked;
  };
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "ArrowRight" || ev.key === "ArrowDown") { go(current + 1); ev.preventDefault(); }
    else if (ev.key === "ArrowLeft" || ev.key === "ArrowUp") { go(current - 1); ev.preventDefault(); }
    else if (ev.key === "Home") go(0);
    else if (ev.key === "End") go(DATA.steps.length - 1);
  });

  const intro = document.getElementById("intro");
  intro.append(el("p", "muted", DATA.source + ": random arrays (seed " + DATA.seed + ")" +
    (DATA.loss_value === null ? "" : ", loss " + fmt(DATA.loss_value)) + ". " +
    "Step through the backward pass with ← → in the order the generated code runs it; " +
    "hover a parameter for its chain-rule path" +
    (Object.keys(DATA.blocks).length ? "; click a block to open it." : ".")));
  intro.append(el("p", "check " + (DATA.check.ok === false ? "bad" : DATA.check.ok ? "good" : "muted"), DATA.check.text));
  showView("top");
  go(0);
  document.body.dataset.ready = "1";
})();

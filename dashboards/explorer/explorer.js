/*
 * Custody explorer: search, alerts, the custody tree as a graph (cytoscape, vendored) and a
 * token's lifecycle on an SVG timeline. No build step, no framework, no network access
 * besides the same-origin JSON API (relative URLs: api/...).
 *
 * State lives in the URL hash: #tree=<task id>&tenant=<t>[&alert=<id>][&node=<node id>]
 * [&token=<token id>], or #token=<token id> alone. Opening a tree or an alert pushes a
 * history entry (the back button works); clicking a node replaces the current entry.
 *
 * Every piece of data is inserted with textContent or setAttribute, never as HTML.
 */
(function () {
  "use strict";

  var ALERT_TYPES = [
    "UNREVOKED_TOKEN", "ORPHANED_TOKEN", "TOKEN_USED_AFTER_REVOCATION",
    "TOKEN_USED_AFTER_EXPIRY", "SHARED_CREDENTIAL", "SCOPE_ESCALATION",
    "DELEGATION_IDENTITY_REUSE", "UNAUTHORIZED_ACCESS", "BREAK_GLASS_UNAPPROVED",
    "BREAK_GLASS_OVERDUE", "LONG_LIVED_CREDENTIAL", "BROKEN_CHAIN", "SELF_APPROVAL",
    "EVIDENCE_GAP"
  ];
  var HASH_KEYS = ["tree", "tenant", "alert", "node", "token"];
  var SVG_NS = "http://www.w3.org/2000/svg";
  var OUTCOME_COLORS = { SUCCESS: "#3c9a4a", DENIED: "#d9822b", FAILURE: "#d42a2a", ERROR: "#d42a2a" };

  var state = {
    tree: null,       // the last /api/tree answer
    treeKey: null,    // "id\u0000tenant" it was asked with
    cy: null,
    timeline: null,   // the last /api/token answer on screen
    timelineZoom: "lifetime", // or "activity": the span of the token's events, expiry aside
    alerts: []
  };
  var routeSeq = 0;
  var timelineSeq = 0;

  function $(testid) {
    return document.querySelector('[data-testid="' + testid + '"]');
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (attrs[key] !== null && attrs[key] !== undefined) node.setAttribute(key, attrs[key]);
    });
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG_NS, tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (attrs[key] !== null && attrs[key] !== undefined) node.setAttribute(key, attrs[key]);
    });
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  // A clickable list item or chip is also a keyboard button: Enter or Space acts as a click.
  function onActivate(node, action) {
    node.addEventListener("click", action);
    node.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        action();
      }
    });
  }

  // ---- time ------------------------------------------------------------------------

  // "2026-11-29T09:00:03.123456Z" -> milliseconds; microseconds are cut to milliseconds
  // so that every engine parses it.
  function parseTime(text) {
    if (!text) return NaN;
    return Date.parse(String(text).replace(/(\.\d{3})\d+/, "$1"));
  }

  function formatTime(text) {
    if (!text) return "";
    return String(text).replace("T", " ").replace(/(\.\d{3})\d*/, "$1").replace(/Z$/, "");
  }

  function clock(ms, withMs) {
    var iso = new Date(ms).toISOString();
    return withMs ? iso.slice(11, 23) : iso.slice(11, 19);
  }

  // ---- API ---------------------------------------------------------------------------

  function api(path, params) {
    var query = new URLSearchParams();
    Object.keys(params || {}).forEach(function (key) {
      var value = params[key];
      if (value !== null && value !== undefined && value !== "") query.set(key, value);
    });
    var url = path + (query.toString() ? "?" + query.toString() : "");
    return fetch(url, { headers: { Accept: "application/json" } }).then(function (response) {
      return response.text().then(function (text) {
        var body = null;
        try {
          body = text ? JSON.parse(text) : null;
        } catch (ignored) {
          body = null;
        }
        if (!response.ok) {
          var message = body && body.error ? body.error : response.status + " " + response.statusText;
          var error = new Error(message);
          error.status = response.status;
          throw error;
        }
        if (body === null) throw new Error("the API answered no JSON for " + path);
        return body;
      });
    });
  }

  // ---- messages ----------------------------------------------------------------------

  function showMessage(text, kind) {
    var box = $("message");
    box.textContent = text;
    box.className = "message" + (kind === "info" ? " info" : "");
    box.setAttribute("data-kind", kind || "error");
    box.hidden = false;
  }

  function clearMessage() {
    var box = $("message");
    box.hidden = true;
    box.textContent = "";
  }

  // ---- URL hash ----------------------------------------------------------------------

  function parseHash() {
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    var parsed = {};
    HASH_KEYS.forEach(function (key) {
      parsed[key] = params.get(key) || null;
    });
    return parsed;
  }

  function hashOf(parsed) {
    var params = new URLSearchParams();
    HASH_KEYS.forEach(function (key) {
      if (parsed[key]) params.set(key, parsed[key]);
    });
    var text = params.toString();
    return text ? "#" + text : "#";
  }

  // Open a new view: a history entry (hashchange then routes).
  function navigate(parsed) {
    var hash = hashOf(parsed);
    if (hash === location.hash) {
      route();
    } else {
      location.hash = hash;
    }
  }

  // Change the selection within the open tree: no new history entry.
  function replaceSelection(changes) {
    var parsed = parseHash();
    Object.keys(changes).forEach(function (key) {
      parsed[key] = changes[key];
    });
    history.replaceState(null, "", hashOf(parsed));
    applySelection(parsed);
  }

  function route() {
    var parsed = parseHash();
    var seq = ++routeSeq;
    clearMessage();
    markActiveAlert(parsed.alert);
    if (!parsed.tree && parsed.token) {
      // A link to a token alone: the token endpoint says which tree holds it.
      setGraphState("loading");
      api("api/token", { id: parsed.token, tenant: parsed.tenant }).then(function (answer) {
        if (seq !== routeSeq) return;
        var full = {
          tree: answer.root_task_id,
          tenant: answer.tenant,
          alert: parsed.alert,
          node: parsed.node || "token:" + parsed.token,
          token: parsed.token
        };
        history.replaceState(null, "", hashOf(full));
        route();
      }, function (error) {
        if (seq !== routeSeq) return;
        showMessage("Token " + parsed.token + ": " + error.message);
        setGraphState(state.tree ? "ready" : "empty");
      });
      return;
    }
    if (!parsed.tree) {
      resetTree();
      return;
    }
    var key = parsed.tree + "\u0000" + (parsed.tenant || "");
    if (state.treeKey === key && state.tree) {
      applySelection(parsed);
      return;
    }
    setGraphState("loading");
    $("tree-title").textContent = "Loading " + parsed.tree + "…";
    api("api/tree", { id: parsed.tree, tenant: parsed.tenant }).then(function (tree) {
      if (seq !== routeSeq) return;
      renderTree(tree);
      state.treeKey = key;
      applySelection(parsed);
    }, function (error) {
      if (seq !== routeSeq) return;
      resetTree();
      var prefix = error.status === 409 ? "Several tenants have task " : "Task ";
      showMessage(prefix + parsed.tree + ": " + error.message);
    });
  }

  // ---- alerts list -------------------------------------------------------------------

  function fillAlertTypes() {
    var select = $("alert-type-select");
    ALERT_TYPES.forEach(function (type) {
      select.appendChild(el("option", { value: type }, type));
    });
  }

  function loadAlerts() {
    var list = $("alert-list");
    var type = $("alert-type-select").value;
    list.setAttribute("data-state", "loading");
    return api("api/alerts", { type: type, limit: 200 }).then(function (answer) {
      if ($("alert-type-select").value !== type) return; // a newer filter is loading
      state.alerts = answer.alerts || [];
      renderAlerts();
    }, function (error) {
      clear(list);
      list.appendChild(el("li", { "class": "empty" }, "Alerts could not be read: " + error.message));
      list.setAttribute("data-state", "error");
    });
  }

  function renderAlerts() {
    var list = $("alert-list");
    clear(list);
    $("alert-count").textContent = "(" + state.alerts.length + (state.alerts.length >= 200 ? "+" : "") + ")";
    if (!state.alerts.length) {
      list.appendChild(el("li", { "class": "empty" }, "No alerts."));
    }
    state.alerts.forEach(function (alert) {
      var item = el("li", {
        "data-testid": "alert-item",
        "data-alert-id": alert.alert_id,
        "data-alert-type": alert.alert_type,
        "data-root": alert.root_task_id,
        "data-tenant": alert.tenant,
        tabindex: "0",
        role: "button",
        title: alert.detail || ""
      });
      item.appendChild(el("span", { "class": "sev " + alert.severity }, alert.severity));
      item.appendChild(el("span", { "class": "title" }, alert.alert_type));
      item.appendChild(el("span", { "class": "line2" },
        formatTime(alert.event_time) + " · " + alert.tenant + " · " + (alert.detail || alert.root_task_id)));
      var open = function () {
        navigate({ tree: alert.root_task_id, tenant: alert.tenant, alert: alert.alert_id });
      };
      onActivate(item, open);
      list.appendChild(item);
    });
    list.setAttribute("data-state", "ready");
    markActiveAlert(parseHash().alert);
  }

  function markActiveAlert(alertId) {
    document.querySelectorAll('[data-testid="alert-item"]').forEach(function (item) {
      item.classList.toggle("active", !!alertId && item.getAttribute("data-alert-id") === alertId);
    });
  }

  // ---- search ------------------------------------------------------------------------

  function search(event) {
    event.preventDefault();
    var q = $("search-input").value.trim();
    var tenant = $("search-tenant").value.trim();
    if (!q) return;
    var list = $("search-results");
    list.setAttribute("data-state", "loading");
    clear(list);
    api("api/search", { q: q, tenant: tenant }).then(function (answer) {
      var results = answer.results || [];
      renderResults(results);
      if (results.length === 1) openResult(results[0]);
    }, function (error) {
      list.appendChild(el("li", { "class": "empty" }, "Search failed: " + error.message));
      list.setAttribute("data-state", "error");
      $("search-count").textContent = "";
    });
  }

  function renderResults(results) {
    var list = $("search-results");
    clear(list);
    $("search-count").textContent = "(" + results.length + ")";
    if (!results.length) list.appendChild(el("li", { "class": "empty" }, "Nothing found."));
    results.forEach(function (result) {
      var item = el("li", {
        "data-testid": "search-result",
        "data-kind": result.kind,
        "data-id": result.id,
        "data-root": result.root_task_id,
        tabindex: "0",
        role: "button"
      });
      // The label often starts with the id ("<workload> in <tree> at <time>"): show the rest.
      var about = result.label && result.label !== result.id ? result.label : "";
      if (about.indexOf(result.id + " ") === 0) about = about.slice(result.id.length + 1);
      if (about) about += " · ";
      item.setAttribute("title", result.label || result.id);
      item.appendChild(el("span", { "class": "chip " + result.kind }, result.kind));
      item.appendChild(el("span", { "class": "title" }, result.id));
      item.appendChild(el("span", { "class": "line2" }, about + "tenant " + result.tenant));
      onActivate(item, function () {
        openResult(result);
      });
      list.appendChild(item);
    });
    list.setAttribute("data-state", "ready");
  }

  function openResult(result) {
    var node = null;
    if (result.kind === "task") node = "task:" + result.id;
    if (result.kind === "token") node = "token:" + result.id;
    if (result.kind === "workload") node = "agent:" + result.id;
    navigate({
      tree: result.task_id || result.root_task_id,
      tenant: result.tenant,
      node: node,
      token: result.kind === "token" ? result.id : null
    });
  }

  // ---- the tree ----------------------------------------------------------------------

  function setGraphState(value) {
    $("graph").setAttribute("data-state", value);
  }

  function resetTree() {
    state.tree = null;
    state.treeKey = null;
    if (state.cy) state.cy.elements().remove();
    clear($("badges"));
    $("tree-title").textContent = "No custody tree open";
    $("tree-title").removeAttribute("data-root");
    $("tree-summary").textContent = "Search a task, token or workload, or pick an alert.";
    clear($("tree-alerts"));
    $("graph").removeAttribute("data-root");
    setGraphState("empty");
    showDetails(null);
    hideTimeline();
  }

  function plural(n, one, many) {
    return n + " " + (n === 1 ? one : many || one + "s");
  }

  function shorten(text, max) {
    text = String(text === null || text === undefined ? "" : text);
    return text.length > max ? text.slice(0, max - 1) + "…" : text;
  }

  function renderTree(tree) {
    state.tree = tree;
    var rootId = "task:" + tree.root_task_id;
    var title = $("tree-title");
    title.textContent = "Custody tree " + tree.root_task_id;
    title.setAttribute("data-root", tree.root_task_id);
    title.setAttribute("data-tenant", tree.tenant);
    var alerts = tree.alerts || [];
    $("tree-summary").textContent = [
      "tenant " + tree.tenant,
      plural((tree.tasks || []).length, "task"),
      plural((tree.credentials || []).length, "credential"),
      plural((tree.accesses || []).length, "access", "accesses"),
      alerts.length ? plural(alerts.length, "alert") : "no alerts"
    ].join(" · ");
    var chips = $("tree-alerts");
    clear(chips);
    alerts.forEach(function (alert) {
      var chip = el("li", {
        "data-testid": "tree-alert",
        "data-alert-id": alert.alert_id,
        title: alert.detail || "",
        tabindex: "0",
        role: "button"
      }, "⚠ " + alert.alert_type);
      var pick = function () {
        replaceSelection({ alert: alert.alert_id, node: null, token: null });
      };
      onActivate(chip, pick);
      chips.appendChild(chip);
    });

    var graph = tree.graph || { nodes: [], edges: [] };
    if (!tree.graph) showMessage("The API answered this tree without its graph.");
    var cy = ensureGraph();
    var ids = {};
    var elements = [];
    (graph.nodes || []).forEach(function (node) {
      ids[node.id] = true;
      var classes = [node.kind];
      if (node.revoked) classes.push("revoked");
      if (node.expired) classes.push("expired");
      if (node.alerting) classes.push("alerting");
      if (node.data && node.data.missing) classes.push("missing");
      if (node.id === rootId) classes.push("root");
      elements.push({
        group: "nodes",
        data: {
          id: node.id,
          kind: node.kind,
          label: node.label,
          display: shorten(node.label || node.id, 24) + (node.status ? "\n" + node.status : ""),
          status: node.status,
          alert_types: node.alert_types || [],
          node: node
        },
        classes: classes.join(" ")
      });
    });
    (graph.edges || []).forEach(function (edge) {
      if (!ids[edge.source] || !ids[edge.target]) {
        if (window.console) console.warn("edge with a missing end skipped", edge);
        return;
      }
      elements.push({
        group: "edges",
        data: {
          id: edge.id,
          source: edge.source,
          target: edge.target,
          kind: edge.kind,
          label: (edge.label || edge.kind) + (edge.count > 1 ? " ×" + edge.count : ""),
          edge: edge
        },
        classes: edge.kind
      });
    });
    cy.batch(function () {
      cy.elements().remove();
      cy.add(elements);
    });
    runLayout(cy, rootId);
    buildBadges();
    $("graph").setAttribute("data-root", tree.root_task_id);
    setGraphState("ready");
  }

  function runLayout(cy, rootId) {
    // Depth = distance from the root task along edges in either direction, so a human who
    // approved a step sits under that step; a part the root does not reach (a token of an
    // undeclared task) starts from its own best-connected node.
    var root = cy.getElementById(rootId);
    var roots = root.nonempty() ? root : cy.collection();
    cy.elements().components().forEach(function (component) {
      if (component.intersection(roots).nonempty()) return;
      var tasks = component.nodes(".task");
      var pool = tasks.nonempty() ? tasks : component.nodes();
      var best = pool.max(function (node) {
        return node.degree(false);
      }).ele;
      roots = roots.union(best);
    });
    // Lay out in the container's own box (not the current viewport, which depends on
    // the previous tree's zoom), then fit.
    cy.resize();
    var container = $("graph");
    cy.layout({
      name: "breadthfirst",
      directed: false,
      roots: roots,
      boundingBox: { x1: 0, y1: 0, w: Math.max(container.clientWidth, 400), h: Math.max(container.clientHeight, 300) },
      spacingFactor: 1,
      padding: 30,
      avoidOverlap: true,
      nodeDimensionsIncludeLabels: false,
      animate: false
    }).run();
    cy.fit(undefined, 30);
  }

  function ensureGraph() {
    if (state.cy) return state.cy;
    if (typeof window.cytoscape !== "function") {
      throw new Error("cytoscape did not load (static/vendor/cytoscape.min.js)");
    }
    var cy = window.cytoscape({
      container: $("graph"),
      style: graphStyle(),
      minZoom: 0.1,
      maxZoom: 3,
      boxSelectionEnabled: false,
      selectionType: "single"
    });
    cy.on("tap", "node", function (event) {
      var node = event.target;
      var changes = { node: node.id(), token: null };
      if (node.data("kind") === "token") changes.token = tokenIdOf(node.data("node"));
      replaceSelection(changes);
    });
    cy.on("tap", "edge", function (event) {
      showEdgeDetails(event.target.data("edge"));
    });
    cy.on("tap", function (event) {
      if (event.target === cy) replaceSelection({ node: null, token: null });
    });
    var scheduled = false;
    cy.on("render viewport position", function () {
      if (scheduled) return;
      scheduled = true;
      window.requestAnimationFrame(function () {
        scheduled = false;
        placeBadges();
      });
    });
    state.cy = cy;
    window.custodyGraph = cy;
    return cy;
  }

  function tokenIdOf(node) {
    if (node && node.data && node.data.token_id) return node.data.token_id;
    return String(node.id).replace(/^token:/, "");
  }

  function graphStyle() {
    return [
      {
        selector: "node",
        style: {
          label: "data(display)",
          "font-size": 10,
          "text-valign": "bottom",
          "text-halign": "center",
          "text-margin-y": 4,
          "text-wrap": "wrap",
          "text-max-width": 110,
          color: "#1d2330",
          "text-background-color": "#ffffff",
          "text-background-opacity": 0.85,
          "text-background-padding": 1,
          "min-zoomed-font-size": 4,
          width: 30,
          height: 30,
          "background-color": "#8a94a6",
          "border-width": 2,
          "border-color": "#ffffff"
        }
      },
      { selector: "node.task", style: { shape: "round-rectangle", width: 44, height: 28, "background-color": "#2f6fdb" } },
      { selector: "node.root", style: { "border-width": 3, "border-color": "#18212f" } },
      { selector: "node.agent", style: { shape: "ellipse", "background-color": "#7a4fc9" } },
      { selector: "node.token", style: { shape: "round-diamond", width: 32, height: 32, "background-color": "#e0a31a" } },
      { selector: "node.tool", style: { shape: "hexagon", "background-color": "#17918a" } },
      { selector: "node.human", style: { shape: "round-triangle", "background-color": "#3c9a4a" } },
      {
        selector: "node.expired",
        style: { "background-color": "#f3ead2", "border-style": "dotted", "border-color": "#8a6d1d", "border-width": 3 }
      },
      {
        selector: "node.revoked",
        style: {
          "background-color": "#d3d6dc",
          "border-style": "dashed",
          "border-color": "#6b7280",
          "border-width": 3,
          color: "#6b7280"
        }
      },
      { selector: "node.missing", style: { opacity: 0.55, "border-style": "dashed", "border-color": "#8a94a6" } },
      { selector: "node.alerting", style: { "border-color": "#d42a2a", "border-width": 4 } },
      {
        selector: "node.highlight",
        style: { "underlay-color": "#ffc400", "underlay-opacity": 0.55, "underlay-padding": 9, "underlay-shape": "ellipse" }
      },
      {
        selector: "node:selected",
        style: { "outline-width": 3, "outline-color": "#2557a7", "outline-offset": 3, "outline-style": "solid" }
      },
      {
        selector: "edge",
        style: {
          width: 1.5,
          "line-color": "#b4bac5",
          "target-arrow-shape": "triangle",
          "target-arrow-color": "#b4bac5",
          "arrow-scale": 0.8,
          "curve-style": "bezier",
          label: "data(label)",
          "font-size": 8,
          color: "#667085",
          "text-rotation": "autorotate",
          "text-background-color": "#ffffff",
          "text-background-opacity": 0.8,
          "min-zoomed-font-size": 8
        }
      },
      { selector: "edge.delegated", style: { width: 3, "line-color": "#2f6fdb", "target-arrow-color": "#2f6fdb" } },
      { selector: "edge.run_by", style: { "line-color": "#b9a3e3", "target-arrow-color": "#b9a3e3" } },
      { selector: "edge.holds", style: { "line-color": "#e8c25f", "target-arrow-color": "#e8c25f" } },
      { selector: "edge.used", style: { "line-color": "#5fb8b3", "target-arrow-color": "#5fb8b3", "line-style": "dashed" } },
      { selector: "edge.approved", style: { width: 2, "line-color": "#3c9a4a", "target-arrow-color": "#3c9a4a" } },
      { selector: "edge.on_behalf_of", style: { "line-color": "#93c49a", "target-arrow-color": "#93c49a", "line-style": "dotted" } },
      { selector: "edge.used_by", style: { width: 2, "line-color": "#c62828", "target-arrow-color": "#c62828", "line-style": "dashed" } },
      { selector: "edge.rotated", style: { width: 2, "line-color": "#e0a31a", "target-arrow-color": "#e0a31a", "line-style": "dashed" } },
      { selector: "edge:selected", style: { width: 3, "line-color": "#2557a7", "target-arrow-color": "#2557a7" } }
    ];
  }

  // Red badges naming the alert types over alerting nodes (HTML over the canvas).
  function buildBadges() {
    var layer = $("badges");
    clear(layer);
    if (!state.cy) return;
    state.cy.nodes(".alerting").forEach(function (node) {
      var types = node.data("alert_types") || [];
      var badge = el("div", {
        "class": "badge",
        "data-testid": "alert-badge",
        "data-node": node.id()
      }, "⚠ " + (types.length ? types.join(", ") : "alert"));
      layer.appendChild(badge);
    });
    placeBadges();
  }

  function placeBadges() {
    if (!state.cy) return;
    var cy = state.cy;
    var layer = $("badges");
    var width = layer.clientWidth;
    layer.querySelectorAll(".badge").forEach(function (badge) {
      var node = cy.getElementById(badge.getAttribute("data-node"));
      if (node.empty()) return;
      var position = node.renderedPosition();
      // Keep the badge inside the graph's box even when its node is at the edge.
      var half = badge.offsetWidth / 2;
      var x = Math.min(Math.max(position.x, half + 2), Math.max(width - half - 2, half + 2));
      badge.style.left = x + "px";
      badge.style.top = (position.y - node.renderedOuterHeight() / 2 - 3) + "px";
    });
  }

  // ---- selection ---------------------------------------------------------------------

  function alertNodeIds(alert) {
    var ids = [];
    if (alert.task_id) ids.push("task:" + alert.task_id);
    if (alert.token_id) ids.push("token:" + alert.token_id);
    if (alert.workload_id) ids.push("agent:" + alert.workload_id, "human:" + alert.workload_id);
    return ids;
  }

  function applySelection(parsed) {
    if (!state.tree || !state.cy) return;
    var cy = state.cy;
    markActiveAlert(parsed.alert);
    var alert = null;
    (state.tree.alerts || []).forEach(function (candidate) {
      if (candidate.alert_id === parsed.alert) alert = candidate;
    });
    document.querySelectorAll('[data-testid="tree-alert"]').forEach(function (chip) {
      chip.classList.toggle("active", !!alert && chip.getAttribute("data-alert-id") === alert.alert_id);
    });
    cy.batch(function () {
      cy.nodes().removeClass("highlight");
      cy.elements().unselect();
      if (alert) {
        alertNodeIds(alert).forEach(function (id) {
          cy.getElementById(id).addClass("highlight");
        });
      }
    });
    var node = parsed.node ? cy.getElementById(parsed.node) : cy.collection();
    if (parsed.node && node.empty()) {
      showMessage("Node " + parsed.node + " is not in this tree.", "info");
    }
    if (node.nonempty()) {
      node.select();
      showNodeDetails(node.data("node"));
    } else if (alert) {
      showAlertDetails(alert);
    } else {
      showDetails(null);
    }
    if (parsed.token) {
      loadTimeline(parsed.token, state.tree.tenant);
    } else {
      hideTimeline();
    }
  }

  // ---- details -----------------------------------------------------------------------

  function flatten(prefix, value, rows) {
    if (value !== null && typeof value === "object" && !Array.isArray(value)) {
      var keys = Object.keys(value);
      if (!keys.length) rows.push([prefix, "{}"]);
      keys.forEach(function (key) {
        flatten(prefix ? prefix + "." + key : key, value[key], rows);
      });
      return rows;
    }
    if (Array.isArray(value)) {
      var simple = value.every(function (item) {
        return item === null || typeof item !== "object";
      });
      rows.push([prefix, simple ? value.join(", ") : JSON.stringify(value)]);
      return rows;
    }
    rows.push([prefix, value]);
    return rows;
  }

  function showDetails(title, rows) {
    var body = $("details").querySelector("tbody");
    clear(body);
    $("details-title").textContent = title || "Details";
    $("details-hint").hidden = !!title;
    $("details").setAttribute("data-id", "");
    (rows || []).forEach(function (row) {
      var tr = el("tr", { "data-key": row[0] });
      tr.appendChild(el("th", { scope: "row" }, row[0]));
      var empty = row[1] === null || row[1] === undefined;
      tr.appendChild(el("td", { "class": empty ? "null" : null }, empty ? "null" : String(row[1])));
      body.appendChild(tr);
    });
  }

  function showNodeDetails(node) {
    var rows = [
      ["id", node.id],
      ["kind", node.kind],
      ["label", node.label],
      ["status", node.status],
      ["revoked", node.revoked],
      ["expired", node.expired],
      ["alerting", node.alerting],
      ["alert_types", (node.alert_types || []).join(", ")]
    ];
    flatten("", node.data || {}, []).forEach(function (row) {
      rows.push(row);
    });
    showDetails(node.kind + " " + node.label, rows);
    $("details").setAttribute("data-id", node.id);
    blastRadiusLink(node);
  }

  // An agent's or a token's blast radius (the query API's JSON), in a new tab.
  function blastRadiusLink(node) {
    var subject = { agent: "identity", token: "token" }[node.kind];
    if (!subject) return;
    var params = new URLSearchParams();
    params.set(subject, node.id.slice(node.id.indexOf(":") + 1));
    var tenant = parseHash().tenant;
    if (tenant) params.set("tenant", tenant);
    var row = el("tr", { "data-key": "blast_radius" });
    row.appendChild(el("th", { scope: "row" }, "blast radius"));
    var cell = el("td");
    cell.appendChild(el("a", {
      href: "api/blast-radius?" + params.toString(),
      target: "_blank",
      rel: "noopener",
      "data-testid": "blast-radius-link"
    }, "what it could and did reach"));
    row.appendChild(cell);
    $("details").querySelector("tbody").appendChild(row);
  }

  function showEdgeDetails(edge) {
    var rows = [["id", edge.id], ["kind", edge.kind], ["source", edge.source], ["target", edge.target], ["label", edge.label]];
    if (edge.count !== undefined) rows.push(["count", edge.count]);
    showDetails("edge " + edge.kind, rows);
    $("details").setAttribute("data-id", edge.id);
  }

  function showAlertDetails(alert) {
    showDetails("alert " + alert.alert_type, flatten("", alert, []));
    $("details").setAttribute("data-id", "alert:" + alert.alert_id);
  }

  // ---- token timeline ----------------------------------------------------------------

  function hideTimeline() {
    timelineSeq++;
    state.timeline = null;
    var panel = $("timeline-panel");
    panel.hidden = true;
    $("timeline").removeAttribute("data-token");
    $("timeline").setAttribute("data-state", "empty");
  }

  function loadTimeline(tokenId, tenant) {
    if (state.timeline && state.timeline.token && state.timeline.token.token_id === tokenId) return;
    var seq = ++timelineSeq;
    var panel = $("timeline-panel");
    panel.hidden = false;
    $("timeline-title").textContent = "Token timeline · " + tokenId;
    $("timeline").setAttribute("data-state", "loading");
    api("api/token", { id: tokenId, tenant: tenant }).then(function (answer) {
      if (seq !== timelineSeq) return;
      state.timeline = answer;
      drawTimeline();
    }, function (error) {
      if (seq !== timelineSeq) return;
      clear($("timeline"));
      $("timeline").appendChild(el("p", { "class": "hint" }, "No timeline: " + error.message));
      $("timeline").setAttribute("data-state", "error");
    });
  }

  function niceStep(span) {
    var steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400];
    var target = span / 6 / 1000;
    for (var i = 0; i < steps.length; i++) {
      if (steps[i] >= target) return steps[i] * 1000;
    }
    return Math.ceil(target / 86400) * 86400 * 1000;
  }

  function drawTimeline() {
    var answer = state.timeline;
    if (!answer) return;
    var token = answer.token || {};
    var box = $("timeline");
    clear(box);
    $("timeline-title").textContent = "Token timeline · " + token.token_id + " · " + (token.state || "");
    var events = (answer.timeline || []).map(function (event) {
      return { event: event, t: parseTime(event.time) };
    }).filter(function (item) {
      return !isNaN(item.t);
    });
    var issued = parseTime(token.issued_at);
    var expires = parseTime(token.expires_at);
    var revoked = parseTime(token.revoked_at);
    var times = events.map(function (item) {
      return item.t;
    }).concat([issued, expires, revoked].filter(function (t) {
      return !isNaN(t);
    }));
    var zoom = $("timeline-zoom");
    if (state.timelineZoom === "activity") {
      var active = events.filter(function (item) {
        return item.event.kind !== "EXPIRES";
      }).map(function (item) {
        return item.t;
      });
      if (active.length) times = active;
    }
    zoom.textContent = state.timelineZoom === "activity" ? "Whole lifetime" : "Zoom to activity";
    zoom.setAttribute("data-zoom", state.timelineZoom);
    if (!times.length) {
      box.appendChild(el("p", { "class": "hint" }, "This token has no dated events."));
      box.setAttribute("data-state", "ready");
      return;
    }
    var t0 = Math.min.apply(null, times);
    var t1 = Math.max.apply(null, times);
    if (t1 - t0 < 1000) t1 = t0 + 1000;
    var span = t1 - t0;
    t0 -= span * 0.02;
    t1 += span * 0.02;

    var width = Math.max(box.clientWidth || 0, 480);
    var height = 150;
    var left = 78;
    var right = 16;
    var lanes = { lifecycle: 38, access: 74, alert: 104 };
    var axisY = 126;
    var x = function (t) {
      return left + (t - t0) / (t1 - t0) * (width - left - right);
    };
    var root = svg("svg", {
      viewBox: "0 0 " + width + " " + height,
      width: width,
      height: height,
      role: "img",
      "aria-label": "lifecycle of token " + token.token_id,
      "data-testid": "timeline-svg"
    });
    root.appendChild(svg("title", {}, "Lifecycle of token " + token.token_id));
    // Marks outside the time range (zoomed to activity) are clipped, not dropped.
    var defs = svg("defs");
    var clip = svg("clipPath", { id: "timeline-clip" });
    clip.appendChild(svg("rect", { x: left - 8, y: 0, width: width - left - right + 16, height: height }));
    defs.appendChild(clip);
    root.appendChild(defs);
    var plot = svg("g", { "clip-path": "url(#timeline-clip)" });
    [["credential", lanes.lifecycle], ["accesses", lanes.access], ["alerts", lanes.alert]].forEach(function (lane) {
      root.appendChild(svg("text", { x: 6, y: lane[1] + 4, "class": "lane-label" }, lane[0]));
      root.appendChild(svg("line", {
        x1: left, x2: width - right, y1: lane[1], y2: lane[1], stroke: "#eef0f3", "stroke-width": 1
      }));
    });

    // Lifetime bar: live from issue to revocation (or expiry), the rest greyed.
    if (!isNaN(issued)) {
      var ends = [revoked, expires].filter(function (t) {
        return !isNaN(t);
      });
      var end = ends.length ? Math.min.apply(null, ends) : t1;
      plot.appendChild(svg("rect", {
        x: x(issued), y: lanes.lifecycle - 5, width: Math.max(1, x(end) - x(issued)), height: 10, rx: 3,
        fill: "#8fd19e", "data-testid": "timeline-bar", "data-part": "live"
      }));
      if (!isNaN(revoked) && !isNaN(expires) && expires > revoked) {
        plot.appendChild(svg("rect", {
          x: x(revoked), y: lanes.lifecycle - 5, width: Math.max(1, x(expires) - x(revoked)), height: 10, rx: 3,
          fill: "#dfe1e6", stroke: "#9aa1ad", "stroke-dasharray": "3 2", "data-testid": "timeline-bar", "data-part": "after-revocation"
        }));
      }
    }

    // Axis with round ticks (UTC).
    var axis = svg("g", { "class": "axis" });
    axis.appendChild(svg("line", { x1: left, x2: width - right, y1: axisY, y2: axisY }));
    var step = niceStep(t1 - t0);
    for (var tick = Math.ceil(t0 / step) * step; tick <= t1; tick += step) {
      axis.appendChild(svg("line", { x1: x(tick), x2: x(tick), y1: axisY, y2: axisY + 4 }));
      axis.appendChild(svg("text", { x: x(tick), y: axisY + 15, "text-anchor": "middle" }, clock(tick, step < 1000)));
    }
    axis.appendChild(svg("text", { x: 6, y: axisY + 15 }, new Date(t0).toISOString().slice(0, 10)));
    root.appendChild(axis);

    var accessIndex = 0;
    events.forEach(function (item) {
      var event = item.event;
      var cx = x(item.t);
      var attrs = {
        "data-testid": "timeline-marker",
        "data-kind": event.kind,
        "data-outcome": event.outcome || null,
        "data-event-id": event.event_id || null,
        "class": "marker"
      };
      var mark;
      if (event.kind === "ACCESS") {
        // Alternate a little up and down so that close accesses stay visible.
        var dotY = lanes.access + (accessIndex++ % 2 ? 5 : -5);
        mark = svg("circle", Object.assign(attrs, {
          cx: cx, cy: dotY, r: 5, fill: OUTCOME_COLORS[event.outcome] || "#8a94a6", stroke: "#fff", "stroke-width": 1
        }));
      } else if (event.kind === "ISSUED") {
        mark = svg("circle", Object.assign(attrs, { cx: cx, cy: lanes.lifecycle, r: 7, fill: "#1f7a35", stroke: "#fff", "stroke-width": 1.5 }));
      } else if (event.kind === "REVOKED") {
        var r = 6;
        var y = lanes.lifecycle;
        mark = svg("path", Object.assign(attrs, {
          d: "M" + (cx - r) + " " + (y - r) + "L" + (cx + r) + " " + (y + r) + "M" + (cx + r) + " " + (y - r) + "L" + (cx - r) + " " + (y + r),
          stroke: "#d42a2a", "stroke-width": 3, fill: "none"
        }));
      } else if (event.kind === "RENEWED") {
        // The issuance's green, hollow: the same credential, its lifetime extended.
        mark = svg("circle", Object.assign(attrs, {
          cx: cx, cy: lanes.lifecycle, r: 6, fill: "#fff", stroke: "#1f7a35", "stroke-width": 2.5
        }));
      } else if (event.kind === "EXPIRES") {
        mark = svg("rect", Object.assign(attrs, { x: cx - 2, y: lanes.lifecycle - 12, width: 4, height: 24, fill: "#8a6d1d" }));
      } else if (event.kind === "ROTATED") {
        var ry = lanes.lifecycle - 14;
        mark = svg("path", Object.assign(attrs, {
          d: "M" + (cx - 6) + " " + (ry - 5) + "L" + (cx + 6) + " " + ry + "L" + (cx - 6) + " " + (ry + 5) + "Z",
          fill: "#e0a31a"
        }));
      } else if (event.kind === "ALERT") {
        var ay = lanes.alert;
        mark = svg("path", Object.assign(attrs, {
          d: "M" + (cx - 7) + " " + (ay - 6) + "L" + (cx + 7) + " " + (ay - 6) + "L" + cx + " " + (ay + 7) + "Z",
          fill: "#d42a2a"
        }));
      } else {
        mark = svg("circle", Object.assign(attrs, { cx: cx, cy: lanes.lifecycle, r: 4, fill: "#8a94a6" }));
      }
      mark.appendChild(svg("title", {}, [formatTime(event.time), event.kind, event.label, event.outcome].filter(Boolean).join(" · ")));
      plot.appendChild(mark);
    });
    root.appendChild(plot);
    box.appendChild(root);

    var body = $("timeline-events").querySelector("tbody");
    clear(body);
    events.forEach(function (item) {
      var event = item.event;
      var tr = el("tr", {
        "class": "k-" + event.kind + (event.outcome ? " o-" + event.outcome : ""),
        "data-testid": "timeline-row",
        "data-kind": event.kind
      });
      tr.appendChild(el("td", {}, formatTime(event.time)));
      tr.appendChild(el("td", {}, event.kind));
      tr.appendChild(el("td", {}, event.label || ""));
      tr.appendChild(el("td", {}, event.outcome || ""));
      body.appendChild(tr);
    });
    box.setAttribute("data-token", token.token_id);
    box.setAttribute("data-state", "ready");
  }

  // ---- start -------------------------------------------------------------------------

  function start() {
    fillAlertTypes();
    $("alert-type-select").addEventListener("change", loadAlerts);
    $("alerts-refresh").addEventListener("click", loadAlerts);
    $("search-form").addEventListener("submit", search);
    $("timeline-zoom").addEventListener("click", function () {
      state.timelineZoom = state.timelineZoom === "activity" ? "lifetime" : "activity";
      drawTimeline();
    });
    $("graph-fit").addEventListener("click", function () {
      if (state.cy) state.cy.fit(undefined, 30);
    });
    window.addEventListener("hashchange", route);
    var resizeTimer = null;
    window.addEventListener("resize", function () {
      window.clearTimeout(resizeTimer);
      resizeTimer = window.setTimeout(function () {
        if (state.timeline) drawTimeline();
        if (state.cy) state.cy.resize();
        placeBadges();
      }, 150);
    });
    try {
      ensureGraph();
    } catch (error) {
      showMessage(error.message);
    }
    loadAlerts();
    route();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();

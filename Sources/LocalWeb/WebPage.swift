/// The web UI: one page, its style and script inline, nothing fetched from anywhere but this
/// port (the Content-Security-Policy says so too). Everything a peer can name (file names,
/// addresses, notes) is put in the page as text (`textContent`), never as HTML.
enum WebPage {
    static let html = #"""
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>PeerShare</title>
        <style>
          body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d2329; }
          header { background: #1d2b3a; color: #fff; padding: 10px 20px; display: flex; gap: 20px; align-items: baseline; }
          header h1 { font-size: 18px; margin: 0; }
          main { padding: 16px 20px; display: grid; gap: 16px; }
          section { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: 12px 16px; }
          h2 { font-size: 15px; margin: 0 0 8px; }
          table { border-collapse: collapse; width: 100%; }
          th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eef0f3; vertical-align: top; }
          th { font-weight: 600; color: #5b6570; font-size: 12px; }
          input[type=text] { font: inherit; padding: 4px 6px; border: 1px solid #c5ccd3; border-radius: 4px; }
          .wide { width: 100%; box-sizing: border-box; }
          button { font: inherit; padding: 3px 10px; border-radius: 4px; border: 1px solid #9aa5b1; background: #fff; cursor: pointer; }
          button.primary { background: #2563eb; border-color: #2563eb; color: #fff; }
          .bar { width: 160px; height: 10px; background: #e5e8ec; border-radius: 5px; overflow: hidden; display: inline-block; vertical-align: middle; }
          .bar > div { height: 100%; background: #16a34a; }
          .state { font-weight: 600; }
          .state.failed { color: #b91c1c; } .state.paused { color: #92400e; }
          .link { width: 360px; font-family: ui-monospace, monospace; font-size: 12px; }
          .qr { width: 160px; height: 160px; display: block; margin-top: 6px; }
          .note { color: #5b6570; font-size: 12px; }
          .peers td, .peers th { font-size: 12px; padding: 2px 6px; }
          #message { min-height: 1.4em; }
          #message.error { color: #b91c1c; } #message.ok { color: #166534; }
          pre { margin: 0; font-size: 12px; white-space: pre-wrap; }
          form { display: flex; gap: 8px; flex-wrap: wrap; align-items: center; }
        </style>
        </head>
        <body>
        <header><h1>PeerShare</h1><span id="daemon"></span><span id="connection">connecting ...</span></header>
        <main>
          <section>
            <h2>Add a download</h2>
            <form id="add-form">
              <input id="link-input" class="wide" type="text" placeholder="peershare://… (paste a link)" autocomplete="off">
              <label>into <input id="dir-input" type="text" size="40"></label>
              <button id="add-button" class="primary" type="submit">Add</button>
            </form>
            <div id="message"></div>
          </section>
          <section>
            <h2>Shares</h2>
            <table><thead><tr><th>ID</th><th>Name</th><th>State</th><th>Link</th><th></th></tr></thead>
            <tbody id="shares"></tbody></table>
          </section>
          <section>
            <h2>Downloads</h2>
            <table><thead><tr><th>ID</th><th>Name</th><th>State</th><th>Progress</th><th>Rate</th><th>Peers</th><th></th></tr></thead>
            <tbody id="downloads"></tbody></table>
          </section>
          <section>
            <h2>Limits</h2>
            <form id="limits-form">
              <label>upload <input id="limit-upload" type="text" size="10"></label>
              <label>download <input id="limit-download" type="text" size="10"></label>
              <label>per peer <input id="limit-perpeer" type="text" size="10"></label>
              <button type="submit">Apply</button>
              <span class="note" id="limits-now"></span>
            </form>
          </section>
          <section><h2>Pipeline</h2><div id="pipeline"></div></section>
          <section><h2>DHT routing table</h2><pre id="dht"></pre></section>
        </main>
        <script>
        "use strict";
        const token = new URLSearchParams(location.search).get("token") || "";
        const history = {};   // item id -> [bytesDone samples, one a second]
        const $ = (id) => document.getElementById(id);
        function el(tag, text, cls) {
          const node = document.createElement(tag);
          if (text !== undefined) node.textContent = String(text);
          if (cls) node.className = cls;
          return node;
        }
        function bytes(n) {
          const units = ["B", "KiB", "MiB", "GiB", "TiB"]; let u = 0;
          while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; }
          return (u ? n.toFixed(1) : n) + " " + units[u];
        }
        function say(text, ok) { const m = $("message"); m.textContent = text; m.className = ok ? "ok" : "error"; }
        async function call(method, path, body) {
          const response = await fetch(path, { method, headers: { "Authorization": "Bearer " + token,
            "Content-Type": "application/json" }, body: body ? JSON.stringify(body) : undefined });
          const answer = await response.json().catch(() => ({ ok: false, error: "HTTP " + response.status }));
          if (!answer.ok) throw new Error(answer.error || "refused");
          return answer;
        }
        function button(label, action) {
          const b = el("button", label); b.type = "button";
          b.addEventListener("click", async () => {
            try { const a = await action(); if (a && a.message) say(a.message, true); } catch (e) { say(e.message, false); }
          });
          return b;
        }
        function actions(item) {
          const td = el("td");
          if (item.state === "paused" || item.state === "failed") td.append(button("Resume", () => call("POST", "api/items/" + item.id + "/resume")));
          else td.append(button("Pause", () => call("POST", "api/items/" + item.id + "/pause")));
          td.append(" ", button("Remove", () => call("POST", "api/items/" + item.id + "/remove")));
          return td;
        }
        function stateCell(item) {
          const td = el("td"); td.append(el("span", item.state, "state " + item.state));
          if (item.note) td.append(el("div", item.note, "note"));
          return td;
        }
        function sparkline(id) {
          const samples = history[id] || [];
          const rates = samples.slice(1).map((v, i) => Math.max(0, v - samples[i]));
          const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
          svg.setAttribute("width", "120"); svg.setAttribute("height", "28"); svg.setAttribute("class", "rate");
          const top = Math.max(1, ...rates);
          const step = 120 / Math.max(1, rates.length - 1);
          const points = rates.map((r, i) => (i * step).toFixed(1) + "," + (27 - r * 26 / top).toFixed(1)).join(" ");
          const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
          line.setAttribute("points", points); line.setAttribute("fill", "none"); line.setAttribute("stroke", "#2563eb");
          svg.append(line);
          const wrap = el("td"); wrap.append(svg, el("div", bytes(rates.length ? rates[rates.length - 1] : 0) + "/s", "note"));
          return wrap;
        }
        const openQR = new Set();
        function render(state) {
          $("daemon").textContent = "daemon pid " + state.pid;
          if (!$("dir-input").value) $("dir-input").value = state.downloadDirectory || "";
          const shares = $("shares"), downloads = $("downloads");
          const shareRows = [], downloadRows = [];
          for (const item of state.items) {
            const row = el("tr"); row.dataset.id = item.id; row.dataset.state = item.state;
            row.append(el("td", item.id), el("td", item.name), stateCell(item));
            if (item.kind === "share") {
              const td = el("td"); const input = el("input"); input.type = "text"; input.readOnly = true;
              input.className = "link"; input.value = item.link; td.append(input, " ",
                button("Copy", async () => { input.select(); try { await navigator.clipboard.writeText(item.link); }
                  catch (e) { document.execCommand("copy"); } return { message: "link " + item.id + " copied" }; }), " ",
                button("QR", () => { openQR.has(item.id) ? openQR.delete(item.id) : openQR.add(item.id); render(state); }));
              if (openQR.has(item.id) && item.link) {
                const img = el("img", undefined, "qr"); img.alt = "QR code of the link";
                img.src = "api/items/" + item.id + "/qr.svg?token=" + encodeURIComponent(token); td.append(img);
              }
              row.append(td, actions(item)); shareRows.push(row);
            } else {
              const samples = history[item.id] = (history[item.id] || []).concat([item.bytesDone]).slice(-60);
              const percent = item.bytesTotal ? Math.floor(item.bytesDone * 100 / item.bytesTotal) : 0;
              const progress = el("td"); const bar = el("div", undefined, "bar"); const fill = el("div");
              fill.style.width = percent + "%"; bar.append(fill); bar.dataset.percent = percent;
              progress.append(bar, el("div", percent + "% of " + bytes(item.bytesTotal), "note"));
              const peers = el("td"); const table = el("table", undefined, "peers");
              const head = el("tr"); head.append(el("th", "peer"), el("th", "path"), el("th", "chunks"), el("th", "bytes"));
              table.append(head);
              for (const peer of item.peerList) {
                const r = el("tr"); r.append(el("td", peer.address), el("td", peer.path), el("td", peer.chunks), el("td", bytes(peer.bytes)));
                table.append(r);
              }
              peers.append(table);
              row.append(progress, sparkline(item.id), peers, actions(item)); downloadRows.push(row);
            }
          }
          shares.replaceChildren(...shareRows); downloads.replaceChildren(...downloadRows);
          $("limits-now").textContent = state.limits;
          const pipeline = $("pipeline"); pipeline.replaceChildren();
          if (!state.pipeline.length) pipeline.append(el("span", "no stages: chunks go as they are", "note"));
          for (const stage of state.pipeline) pipeline.append(el("div", stage));
          $("dht").textContent = state.dht;
        }
        $("add-form").addEventListener("submit", async (event) => {
          event.preventDefault();
          try {
            const answer = await call("POST", "api/downloads", { link: $("link-input").value, directory: $("dir-input").value });
            say("added as item " + answer.id, true); $("link-input").value = "";
          } catch (e) { say(e.message, false); }
        });
        $("limits-form").addEventListener("submit", async (event) => {
          event.preventDefault();
          try {
            const answer = await call("POST", "api/limits", { upload: $("limit-upload").value,
              download: $("limit-download").value, perPeer: $("limit-perpeer").value });
            say(answer.message, true);
          } catch (e) { say(e.message, false); }
        });
        function connect() {
          const events = new EventSource("api/events?token=" + encodeURIComponent(token));
          events.onopen = () => { $("connection").textContent = "live"; };
          events.onmessage = (event) => render(JSON.parse(event.data));
          events.onerror = () => { $("connection").textContent = "reconnecting ..."; };
        }
        connect();
        </script>
        </body>
        </html>
        """#
}

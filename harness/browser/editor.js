// Drive the real ComfyUI graph editor in headless Chromium (playwright-core + the system Chromium).
//   node editor.js export PORT API_DIR OUT_DIR   API workflows -> UI-format workflows, as the editor saves them,
//                                                laid out in named stages with a note (OUT_DIR/layout/stages.json, notes/*.md)
//   node editor.js check  PORT MANIFEST.json     MANIFEST = [{file, overrides}]: load each UI workflow, list missing node
//                                                types, set widget overrides, graphToPrompt, list the hidden (advanced)
//                                                widgets before and after "Show Advanced", queue it through the UI
//                                                (the Run button's code path), wait for the result
//   node editor.js template PORT MODULE NAME      open ComfyUI's template browser, pick MODULE under Extensions, click the
//                                                NAME card; report the thumbnails it shows and the graph it loaded
//   node editor.js help PORT NODE BLUEPRINT    add NODE, select it and open the right side panel's Info tab (its help
//                                                page), then add the BLUEPRINT from the node search as a user does
//                                                (double-click the canvas, type its name, Enter); report the help text
//                                                shown, what was fetched, and the subgraph node's widgets and prompt
// Prints one JSON object per workflow on stdout; exits 1 if anything failed.
const { chromium } = require('playwright-core');
const fs = require('fs'), os = require('os'), path = require('path');

const [mode, port, ...rest] = process.argv.slice(2);
const BASE = `http://127.0.0.1:${port}`;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

async function openEditor() {
  const ctx = await chromium.launchPersistentContext(fs.mkdtempSync(path.join(os.tmpdir(), 'hspace-chromium-')), {
    executablePath: CHROMIUM, headless: true, viewport: { width: 1600, height: 1000 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = ctx.pages()[0] || await ctx.newPage();
  await page.goto(BASE + '/', { waitUntil: 'domcontentloaded' });
  await page.waitForFunction(() => window.app && app.graph && window.LiteGraph &&
      Object.keys(LiteGraph.registered_node_types || {}).length > 100, null, { timeout: 180000 });
  await page.waitForTimeout(1000);
  if (await page.evaluate(() => document.querySelectorAll('.p-dialog').length)) await page.keyboard.press('Escape');
  return { ctx, page };
}

// Readable layout (workflows/layout/): stages left to right, one named group each; inside a stage, sub-columns by
// the longest chain of links within the stage; a node sits as level as it can with what feeds it. A MarkdownNote
// (notes/<name>.md) at the top left says what the workflow does, which models it needs and which knobs matter.
function layoutGraph([layout, name, note]) {
  const TITLE = LiteGraph.NODE_TITLE_HEIGHT, GAP_X = 50, GAP_Y = 30, GROUP_GAP = 60, PAD = 20, GROUP_TITLE = 50;
  const MAX_COLUMN = 1700, NOTE_W = 460;
  const own = (layout.workflows || {})[name] || {};
  const stageOf = (n) => (own.nodes || {})[String(n.id)] || layout.class_stage[n.type];
  const nodes = app.graph.nodes;
  for (const n of nodes) if (!stageOf(n)) throw new Error(`${name}: no stage for node ${n.id} (${n.type})`);
  const byId = new Map(nodes.map(n => [n.id, n]));
  const sources = (n) => (n.inputs || []).filter(i => i.link != null)
    .map(i => byId.get(app.graph.links[i.link].origin_id)).filter(Boolean);
  const fanout = new Map(nodes.map(n => [n.id, 0]));
  for (const n of nodes) for (const s of sources(n)) fanout.set(s.id, fanout.get(s.id) + 1);
  const rect = (n) => [n.pos[0], n.pos[1] - TITLE, n.size[0], n.size[1] + TITLE];
  const order = nodes.map(n => n.id);  // the API graph's order
  let x = 0;
  const groups = [];
  if (note) {
    const md = LiteGraph.createNode(LiteGraph.registered_node_types.MarkdownNote ? 'MarkdownNote' : 'Note');
    md.title = 'About this workflow';
    md.widgets[0].value = note;
    const lines = note.split('\n').reduce((k, l) => k + Math.max(1, Math.ceil(l.length / 58)) + (l.startsWith('#') ? 1 : 0), 0);
    app.graph.add(md);
    md.size = [NOTE_W, 40 + 19 * lines];
    md.pos = [0, GROUP_TITLE + TITLE];
    x = NOTE_W + GROUP_GAP;
  }
  for (const stage of layout.stages) {
    const members = nodes.filter(n => stageOf(n) === stage.name).sort((a, b) => order.indexOf(a.id) - order.indexOf(b.id));
    if (!members.length) continue;
    const inStage = new Set(members.map(n => n.id));
    const depth = new Map();
    const depthOf = (n) => {
      if (!depth.has(n.id)) {
        depth.set(n.id, 0);
        depth.set(n.id, Math.max(0, ...sources(n).filter(s => inStage.has(s.id)).map(s => depthOf(s) + 1)));
      }
      return depth.get(n.id);
    };
    const levels = [];
    for (const n of members) (levels[depthOf(n)] = levels[depthOf(n)] || []).push(n);
    const top = GROUP_TITLE + TITLE, gx = x;
    let cx = x + PAD, bottom = top;
    for (const level of levels.filter(Boolean)) {
      // as level as possible with the nodes that feed it (loaders that feed everything count little)
      const wanted = (n) => {
        const placed = sources(n).filter(s => s.pos[0] < cx);
        if (!placed.length) return null;
        const w = placed.map(s => 1 / fanout.get(s.id));
        return placed.reduce((a, s, i) => a + w[i] * (s.pos[1] + s.size[1] / 2), 0) / w.reduce((a, b) => a + b, 0);
      };
      const keyed = level.map((n, i) => [wanted(n), i, n]);
      if (keyed.every(k => k[0] !== null)) keyed.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
      let y = top, width = 0;
      for (const [want, , n] of keyed) {
        if (y > top && y + n.size[1] > top + MAX_COLUMN) { cx += width + GAP_X; y = top; width = 0; }
        const goal = want === null ? y : Math.max(y, want - n.size[1] / 2);
        n.pos = [cx, goal];
        y = goal + n.size[1] + GAP_Y + TITLE;
        width = Math.max(width, n.size[0]);
        bottom = Math.max(bottom, goal + n.size[1]);
      }
      cx += width + GAP_X;
    }
    const title = (own.titles || {})[stage.name] || stage.name;
    groups.push({ title, bounding: [gx, 0, cx - GAP_X + PAD - gx, bottom + PAD], color: stage.color });
    x = cx - GAP_X + PAD + GROUP_GAP;
  }
  for (const g of groups) {
    const group = new LiteGraph.LGraphGroup(g.title);
    group.configure({ id: -1, title: g.title, bounding: g.bounding, color: g.color, font_size: 24, flags: {} });
    app.graph.add(group);
  }
  // overlap check here too, so a bad layout fails the export rather than the tests
  const rs = app.graph.nodes.map(n => [n.id, rect(n)]);
  for (let i = 0; i < rs.length; i++) for (let j = i + 1; j < rs.length; j++) {
    const [a, b] = [rs[i][1], rs[j][1]];
    if (a[0] < b[0] + b[2] && b[0] < a[0] + a[2] && a[1] < b[1] + b[3] && b[1] < a[1] + a[3])
      throw new Error(`${name}: nodes ${rs[i][0]} and ${rs[j][0]} overlap`);
  }
}

async function exportAll(page, apiDir, outDir) {
  const layoutDir = path.join(outDir, 'layout');
  const layout = JSON.parse(fs.readFileSync(path.join(layoutDir, 'stages.json'), 'utf8'));
  for (const file of fs.readdirSync(apiDir).filter(f => f.endsWith('.json')).sort()) {
    const api = JSON.parse(fs.readFileSync(path.join(apiDir, file), 'utf8'));
    const name = file.replace(/\.json$/, '');
    const notePath = path.join(layoutDir, 'notes', name + '.md');
    const note = fs.existsSync(notePath) ? fs.readFileSync(notePath, 'utf8').trim() : null;
    await page.evaluate(async ([api, file]) => { await app.loadApiJson(api, file); }, [api, file]);
    await page.waitForTimeout(500);  // let image previews load so node sizes settle
    const ui = await page.evaluate(`(${layoutGraph})(${JSON.stringify([layout, name, note])}); (() => {
      for (const node of app.graph.nodes)  // sample workflows are reproducible: seeds stay fixed
        for (const w of node.widgets || []) if (w.name === 'control_after_generate') w.value = 'fixed';
      app.canvas.setDirty(true, true);
      return app.graph.serialize();
    })()`);
    fs.writeFileSync(path.join(outDir, file), JSON.stringify(ui, null, 1) + '\n');
    console.log(JSON.stringify({ workflow: file, nodes: ui.nodes.length, links: ui.links.length, groups: ui.groups.length }));
  }
}

async function checkAll(page, manifest) {
  let ok = true;
  for (const { file, overrides } of manifest) {
    const ui = JSON.parse(fs.readFileSync(file, 'utf8'));
    const loaded = await page.evaluate(async ([ui, name, overrides]) => {
      const missing = ui.nodes.map(n => n.type).filter(t => !(t in LiteGraph.registered_node_types));
      const calls = [];
      const orig = app.showMissingNodesError.bind(app);
      app.showMissingNodesError = (m) => { calls.push(m); };
      await app.loadGraphData(ui, true, true, name, { showMissingNodesDialog: false });
      app.showMissingNodesError = orig;
      for (const node of app.graph.nodes)  // what a user does: edit widget values in the editor
        for (const w of node.widgets || []) if (w.name in overrides) w.value = overrides[w.name];
      const prompt = await app.graphToPrompt();
      // expert widgets start hidden; the node menu's "Show Advanced" (toggleAdvanced) brings them back
      const hiddenNow = () => Object.fromEntries(app.graph.nodes.map(n => [n.id,
        (n.widgets || []).filter(w => !n.isWidgetVisible(w)).map(w => w.name)]));
      const hidden = hiddenNow(), heights = Object.fromEntries(app.graph.nodes.map(n => [n.id, n.size[1]]));
      const toggled = app.graph.nodes.filter(n => (n.widgets || []).some(w => w.advanced));
      for (const n of toggled) n.toggleAdvanced();
      const shown = hiddenNow(), grown = toggled.filter(n => n.size[1] > heights[n.id]).map(n => n.id);
      for (const n of toggled) n.toggleAdvanced();
      return { missing, missingDialog: calls.length, errors: app.graph.nodes.filter(n => n.has_errors).map(n => n.type),
               prompt: prompt.output, hidden, shownAfterToggle: shown, toggled: toggled.map(n => n.id), grown };
    }, [ui, path.basename(file), overrides || {}]);
    const response = page.waitForResponse(r => r.url().endsWith('/prompt') && r.request().method() === 'POST', { timeout: 60000 });
    await page.evaluate(() => app.queuePrompt(0, 1));
    const body = await (await response).json();
    let status = 'not queued', messages = [];
    if (body.prompt_id) {
      for (let i = 0; i < 3600; i++) {
        const h = await page.evaluate(async (id) => (await fetch(`/history/${id}`)).json(), body.prompt_id);
        const entry = h[body.prompt_id];
        if (entry && entry.status && entry.status.completed !== undefined &&
            ['success', 'error'].includes(entry.status.status_str)) {
          status = entry.status.status_str;
          messages = entry.status.messages.filter(m => m[0] === 'execution_error').map(m => m[1].exception_message);
          break;
        }
        await page.waitForTimeout(500);
      }
    } else {
      messages = [JSON.stringify(body).slice(0, 500)];
    }
    const result = { workflow: path.basename(file), missing: loaded.missing, missingDialog: loaded.missingDialog,
                     errors: loaded.errors, status, messages, prompt: loaded.prompt, hidden: loaded.hidden,
                     shownAfterToggle: loaded.shownAfterToggle, toggled: loaded.toggled, grown: loaded.grown };
    console.log(JSON.stringify(result));
    ok = ok && status === 'success' && loaded.missing.length === 0;
  }
  return ok;
}

async function openTemplate(page, module, name) {
  const fetched = [];  // the browser fetches each thumbnail, then shows it from a blob: URL
  page.on('response', r => { if (r.url().includes('/workflow_templates/')) fetched.push({ url: r.url(), status: r.status() }); });
  await page.evaluate(() => app.extensionManager.command.execute('Comfy.BrowseTemplates'));
  await page.getByText(module, { exact: true }).first().click();
  const card = page.getByTestId(`template-workflow-${name}`);
  await card.waitFor({ timeout: 60000 });
  const shown = () => [...document.querySelectorAll('[data-testid^="template-workflow-"]')].map(e => {
    const img = e.querySelector('img');
    return { name: e.getAttribute('data-testid').slice('template-workflow-'.length), thumbnail: img ? img.naturalWidth : 0 };
  });
  await page.waitForFunction(`(${shown})().every(c => c.thumbnail > 0)`, null, { timeout: 30000 }).catch(() => {});
  // the browser loads (and drops) thumbnails as cards scroll in and out of view: look at each card as a user would
  const cards = [];
  for (const c of await page.locator('[data-testid^="template-workflow-"]').all()) {
    await c.scrollIntoViewIfNeeded();
    const e = await c.elementHandle();
    await page.waitForFunction(e => (e.querySelector('img') || {}).naturalWidth > 0, e, { timeout: 10000 }).catch(() => {});
    cards.push(await e.evaluate(e => ({ name: e.getAttribute('data-testid').slice('template-workflow-'.length),
                                        thumbnail: (e.querySelector('img') || {}).naturalWidth || 0 })));
  }
  // under load a click can land while the cards re-lay out (thumbnails arriving) and open nothing: click once more,
  // saying so, before giving up with the dialog's text
  for (let attempt = 1; ; attempt++) {
    await card.click();
    const closed = await page.waitForFunction(() => !document.querySelector('.p-dialog'), null, { timeout: 30000 })
      .then(() => true, () => false);
    if (closed) break;
    const open = await page.evaluate(() => (document.querySelector('.p-dialog') || {}).innerText || '');
    if (attempt === 2) throw new Error(`the template dialog is still open after two clicks on ${name}: ${open.slice(0, 300)}`);
    console.error(`the template dialog is still open 30 s after clicking ${name}; clicking again`);
  }
  const nodes = await page.evaluate(() => app.graph.nodes.map(n => n.type));
  console.log(JSON.stringify({ module, name, cards, fetched, nodes }));
  return nodes.length > 0;
}

async function helpAndBlueprint(page, nodeId, blueprint) {
  const fetched = [];
  page.on('response', r => { if (/\/docs\/|global_subgraphs/.test(r.url())) fetched.push({ url: r.url(), status: r.status() }); });
  // a user selects the node and opens the right side panel's Info tab, which shows the node's help page
  const found = await page.evaluate((nodeId) => {
    app.graph.clear();
    const node = LiteGraph.createNode(nodeId);
    if (!node) return false;
    app.graph.add(node);
    node.pos = [200, 200];
    app.canvas.selectNode(node);
    const pinia = document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia;
    pinia._s.get('rightSidePanel').openPanel('info');
    return true;
  }, nodeId);
  const heading = page.getByText('When it refuses', { exact: true }).first();
  const shown = found && await heading.waitFor({ timeout: 60000 }).then(() => true, () => false);
  const helpText = shown ? await page.evaluate(() => document.body.innerText) : '';
  await page.evaluate(() => document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia
    ._s.get('rightSidePanel').closePanel());
  await page.evaluate(() => app.graph.clear());
  const box = await page.locator('#graph-canvas').boundingBox();
  await page.mouse.dblclick(box.x + box.width / 2, box.y + box.height / 2);
  await page.keyboard.type(blueprint, { delay: 20 });
  await page.getByText(blueprint).first().waitFor({ timeout: 30000 }).catch(() => {});
  await page.waitForTimeout(1000);
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => app.graph.nodes.length > 0, null, { timeout: 30000 }).catch(() => {});
  const added = await page.evaluate(async () => {
    const node = app.graph.nodes[0];
    if (!node) return null;
    const prompt = await app.graphToPrompt();
    return { title: node.title, type: node.type, isSubgraph: !!node.subgraph, widgets: (node.widgets || []).map(w => w.name),
             inputs: (node.inputs || []).map(i => i.name), outputs: (node.outputs || []).map(o => o.name),
             inner: (node.subgraph ? node.subgraph.nodes : []).map(n => n.type),
             prompt: prompt.output };
  });
  console.log(JSON.stringify({ node: nodeId, found, shown, helpText, blueprint, added, fetched }));
  return shown && added !== null && added.isSubgraph;
}

(async () => {
  const { ctx, page } = await openEditor();
  let ok = true;
  try {
    if (mode === 'export') await exportAll(page, rest[0], rest[1]);
    else if (mode === 'check') ok = await checkAll(page, JSON.parse(fs.readFileSync(rest[0], 'utf8')));
    else if (mode === 'template') ok = await openTemplate(page, rest[0], rest[1]);
    else if (mode === 'help') ok = await helpAndBlueprint(page, rest[0], rest[1]);
    else throw new Error('mode must be export, check, template or help');
  } finally {
    await ctx.close();
  }
  process.exit(ok ? 0 : 1);
})().catch(e => { console.error(e); process.exit(1); });

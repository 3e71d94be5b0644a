// The report page's style sheet, inline in the page (nothing is fetched).
#include "userspace/migration/report_html_parts.hh"

namespace ferry::migration::html {

// One palette for text, charts and print: Okabe-Ito colours (distinguishable
// with colour-blindness) for the data, greys for everything else.
std::string_view style_sheet() {
  return R"css(
:root{--ink:#1f2328;--muted:#59636e;--line:#d8dee4;--soft:#f6f8fa;--blue:#0072b2;--blue-light:#7fb8d8;
--verm:#d55e00;--green:#009e73;--amber:#e69f00;--purple:#cc79a7}
*{box-sizing:border-box}
body{margin:0;background:#fff;color:var(--ink);font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:32px 28px 48px}
h1{font-size:24px;font-weight:600;margin:2px 0 2px;overflow-wrap:anywhere}
h2{font-size:17px;font-weight:600;margin:0 0 2px}
h3{font-size:13px;font-weight:600;margin:0 0 6px;color:var(--muted)}
section{margin-top:36px}
.eyebrow{font-size:12px;letter-spacing:.08em;text-transform:uppercase;color:var(--muted)}
.sub,.muted,.lede{color:var(--muted)}
.lede{margin:0 0 12px;font-size:13px}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.badge{display:inline-block;vertical-align:middle;font-size:13px;font-weight:600;padding:2px 10px;border-radius:999px;margin-left:6px;border:1px solid}
.badge.migrated{background:#dafbe1;color:#116329;border-color:#aceebb}
.badge.failed,.badge.other{background:#ffebe9;color:#a40e26;border-color:#ffcecb}
.badge.cancelled{background:#fff8c5;color:#7d4e00;border-color:#f5e0a0}
.badge.outcome-unknown{background:#fbefff;color:#6e40c9;border-color:#e4cdfa}
.alert{margin:16px 0 0;padding:10px 14px;border-radius:6px;border:1px solid #ffcecb;background:#fff5f5;overflow-wrap:anywhere}
.alert.unknown{border-color:#e4cdfa;background:#fbf7ff}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:12px;margin-top:20px}
.card.wide{grid-column:span 2}
.pair{display:flex;flex-wrap:wrap;gap:0 36px}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 14px}
.card .k{font-size:12px;color:var(--muted)}
.card .v{font-size:22px;font-weight:600;font-variant-numeric:tabular-nums;white-space:nowrap}
.card .v.over{color:#a40e26}
.card .v.pred{color:var(--muted)}
.card .s{font-size:12px;color:var(--muted)}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:18px 0 0;font-size:13px}
dl.facts dt{color:var(--muted)}
dl.facts dd{margin:0;overflow-wrap:anywhere}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.legend{display:flex;flex-wrap:wrap;gap:4px 18px;margin:6px 0 8px;padding:0;list-style:none;font-size:12px;color:var(--muted)}
.legend li{display:flex;align-items:center;gap:6px}
.legend svg{flex:none}
/* Below 600px the charts scroll sideways rather than shrink their text out of reach. */
.chart-wrap{overflow-x:auto}
.chart{display:block;width:100%;min-width:600px;height:auto}
.chart text{font-size:12px;fill:var(--muted)}
.chart .panel-title{font-size:13px;font-weight:600;fill:var(--ink)}
.chart .axis-title{font-size:12px;fill:var(--ink)}
.grid{stroke:#eaeef2;stroke-width:1}
.axis{stroke:#8c959f;stroke-width:1}
.paused{fill:#f3f4f6}
.round-bar{fill:var(--blue)}
.round-bar[data-final]{fill:var(--blue-light)}
.line{fill:none;stroke-width:2;stroke-linejoin:round}
.line.left,.dot.left{stroke:var(--verm)}
.line.dirty,.dot.dirty{stroke:var(--amber)}
.line.bw,.dot.bw{stroke:var(--green)}
.line.left{stroke-dasharray:5 3}
.dot{fill:#fff;stroke-width:2}
.cap{stroke:var(--muted);stroke-dasharray:2 3}
.marker{stroke:var(--ink);stroke-width:1.5;stroke-dasharray:6 4}
.marker.cancel{stroke:#a40e26}
.marker-swatch{stroke:var(--ink);stroke-width:1.5;stroke-dasharray:3 2}
.chart .marker-label{font-size:12px;font-weight:600;fill:var(--ink)}
.chart .marker-label.cancel{fill:#a40e26}
.c-pages{fill:var(--blue);background:var(--blue)}
.c-state{fill:var(--amber);background:var(--amber)}
.c-ready{fill:var(--green);background:var(--green)}
.c-commit{fill:var(--purple);background:var(--purple)}
.c-final{fill:var(--blue-light)}
.chart .seg-label{fill:#fff;font-weight:600;font-variant-numeric:tabular-nums}
.chart .seg-label.c-state{fill:var(--ink)}
.chart .row-label{font-size:13px;font-weight:600;fill:var(--ink)}
.downtime-mark{stroke:var(--ink);stroke-width:3}
.limit{stroke:#a40e26;stroke-dasharray:4 3;stroke-width:1.5}
.chart .note-text{font-size:11px}
.parts-row{display:flex;flex-wrap:wrap;gap:12px 40px;margin-top:10px}
.parts{flex:1 1 300px;max-width:460px}
.parts table{width:100%;border-collapse:collapse;font-size:13px}
.parts td{padding:3px 0;border-bottom:1px solid #eaeef2}
.parts tr.total td{font-weight:600;border-top:1px solid var(--line)}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:8px;vertical-align:-1px}
.sw.mark{width:3px;background:var(--ink)}
.note{font-size:12px;color:var(--muted);max-width:70em}
.scroll{overflow-x:auto;border:1px solid var(--line);border-radius:8px}
table.rounds{border-collapse:collapse;width:100%;font-size:12.5px}
.rounds th,.rounds td{padding:6px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}
.rounds th{background:var(--soft);font-weight:600;text-align:left;line-height:1.25;vertical-align:bottom}
.rounds th.num{text-align:right;white-space:normal}
.rounds tbody tr:last-child td{border-bottom:none}
.rounds .u{font-weight:400;color:var(--muted)}
.rounds td.reason{min-width:16em;color:var(--muted);overflow-wrap:anywhere}
.pill{display:inline-block;padding:0 8px;border-radius:999px;font-size:.95em;background:#eef1f4;white-space:nowrap}
.pill.switchover{background:var(--ink);color:#fff}
.pill.final{background:#dbeaf5;color:#0b4f7c}
.pill.cancel{background:#ffebe9;color:#a40e26}
.empty{color:var(--muted);font-style:italic}
footer{margin-top:40px;padding-top:12px;border-top:1px solid var(--line);font-size:12px;color:var(--muted)}
@media (max-width:640px){main{padding:18px 14px}h1{font-size:20px}.cards{grid-template-columns:repeat(2,1fr)}
.card .v{font-size:18px}dl.facts{grid-template-columns:1fr}dl.facts dd{margin-bottom:6px}}
@media print{main{max-width:none;padding:0}section{margin-top:22px}.chart,.cards,.card,.parts-row{break-inside:avoid}
.scroll,.chart-wrap{overflow:visible;border:none}.chart{min-width:0}table.rounds{font-size:9.5px}.rounds th,.rounds td{padding:3px 5px}
.rounds tr{break-inside:avoid}thead{display:table-header-group}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
)css";
}

}  // namespace ferry::migration::html

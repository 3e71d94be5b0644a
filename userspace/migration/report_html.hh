#pragma once
// `ferry migrate --report FILE.html`: the migration report as one HTML page
// for people (key figures, a per-round timeline, predicted vs actual
// downtime, the rounds table). Self-contained: inline CSS and SVG, no
// scripts, no fonts or images to fetch, and a Content-Security-Policy that
// forbids fetching anything, so the page can be attached to a ticket and
// opened offline, and a hostile string that slipped past escaping could
// still not run or phone home.
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "userspace/base/error.hh"

namespace ferry::migration {

// Renders a report in the shape migration::to_json(MigrationStatus) gives:
// what `ferry migrate --json` prints, or a saved copy of it. It takes the
// JSON rather than the struct so saved reports and benchmark output render
// the same way. A missing, null or mistyped field reads as unknown; it never
// throws.
std::string report_html(const nlohmann::json& report);

// Writes report_html(report) to `path` through a temporary file and a
// rename, so nobody opens half a page.
Status write_report_html(const std::string& path, const nlohmann::json& report);

// `s` with & < > " ' replaced by entities, safe as element text and inside
// quoted attributes. The error and reason strings come from the peer.
std::string html_escape(std::string_view s);

}  // namespace ferry::migration

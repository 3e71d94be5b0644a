// `ferry migrate --report` end to end, in a real browser: the real CLI
// follows a stand-in VM's control socket that answers with a finished
// migration, writes the page, and Debian's headless chromium renders it.
// The page must draw one bar per round, log nothing to the console and
// fetch nothing. No KVM needed (ctest: e2e.report_html).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "userspace/control/api.hh"
#include "tests/e2e/process.hh"
#include "userspace/migration/status.hh"
#include "tests/temp_dir.hh"

namespace ferry::test {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kChromium = "/usr/bin/chromium";

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::size_t count(const std::string& haystack, const std::string& needle) {
  std::size_t n = 0;
  for (auto at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + needle.size())) ++n;
  return n;
}

// A VM's control socket that knows one migration, already over: enough for
// `ferry migrate` to start it, follow it and write its report.
class StandInVm {
 public:
  StandInVm(const std::string& path, migration::MigrationStatus status) : status_(std::move(status)) {
    auto s = control::ApiServer::listen(path);
    if (!s) {
      error_ = s.error().what();
      return;
    }
    server_ = std::make_unique<control::ApiServer>(std::move(*s));
    thread_ = std::thread([this] {
      (void)server_->serve([this](const std::string& cmd, const json& req) -> Result<json> {
        if (cmd == "migrate") return json::object();
        if (cmd == "migration")
          return migration::to_json(status_, req.value("since_round", std::size_t{0}), migration::kRoundsPerAnswer);
        return fail("unknown command {}", cmd);
      });
    });
  }
  ~StandInVm() {
    if (server_) server_->stop();
    if (thread_.joinable()) thread_.join();
  }
  const std::string& error() const { return error_; }

 private:
  migration::MigrationStatus status_;
  std::unique_ptr<control::ApiServer> server_;
  std::thread thread_;
  std::string error_;
};

// The migration from docs/tracing.md's example report: nine rounds, the
// switchover decided in round 7, a capped link.
migration::MigrationStatus example_migration() {
  migration::MigrationStatus s;
  s.phase = migration::Phase::kMigrated;
  s.to = "127.0.0.1:47123";
  s.session = 0x1f2e3d4c5b6a7980;
  s.dirty_backend = "bitmap";
  s.memory_bytes = 64ull << 20;
  s.max_bandwidth = 192 * 1024;
  s.downtime_limit_ms = 400;
  s.elapsed_ms = 19644.6;
  s.pages_sent = 997, s.resent_pages = 729, s.unallocated_pages = 16116, s.bytes_sent = 4089446;
  s.downtime_ms = 345.8, s.guest_downtime_ms = 364.5;
  s.final_pages_ms = 310.5, s.final_pages = 15, s.state_ms = 34.6, s.state_bytes = 6748;
  s.ready_ms = 0.6, s.dest_load_ms = 0.3, s.commit_ms = 14.0;
  s.zero_copy = "kernel copied the data (loopback/veth?): plain sends";
  s.policy = "adaptive";
  s.policy_inputs = "kernel (eBPF) for the link, userspace counters for dirtying";
  s.predicted_downtime_ms = 352.3;
  s.predict_pages_ms = 315.8, s.predict_state_ms = 34.3, s.predict_rtt_ms = 1.8, s.predict_fixed_ms = 0.4;
  s.calibration_pause_ms = 0.2;
  struct Row {
    std::uint64_t pages;
    double ms;
    std::uint64_t dirty_after;
    double expected_ms, throttle;
  };
  const Row rows[] = {{268, 4277.5, 237, 4978.9, 0},   {237, 4960.9, 259, 5740.7, 0},  {22, 454.1, 29, 1420.0, 0.62},
                      {241, 5045.3, 101, 2100.2, 0.55}, {101, 2109.3, 57, 1229.5, 0.55}, {57, 1191.4, 34, 749.2, 0.55},
                      {34, 711.8, 22, 498.6, 0.55},     {22, 463.9, 15, 352.3, 0.55},    {15, 310.0, 0, 0, 0.55}};
  for (std::uint32_t i = 0; i < std::size(rows); ++i) {
    migration::RoundFigures r;
    r.round = i;
    r.pages = rows[i].pages;
    r.bytes = rows[i].pages * 4128;
    r.ms = rows[i].ms;
    r.dirty_after = rows[i].dirty_after;
    r.dirty_rate = 0.23 * 1048576 * (1 - 0.4 * rows[i].throttle);
    r.bandwidth = (0.187 + 0.003 * i) * 1048576;
    r.expected_downtime_ms = rows[i].expected_ms;
    r.throttle = {rows[i].throttle};
    r.decision = i == 7 ? "switchover" : i == 8 ? "final" : "continue";
    r.reason = i == 8 ? "" : fmt::format("predicted downtime {:.1f} ms {} the 400 ms limit", rows[i].expected_ms,
                                         i == 7 ? "fits" : "exceeds");
    s.rounds.push_back(r);
  }
  return s;
}

// What chromium made of a page: the DOM after load, its stderr, the
// requests it sent for the page (from its net log) and a screenshot.
struct Rendered {
  ProcessResult run;
  std::vector<std::string> console;  // console messages and uncaught errors
  std::vector<std::string> fetches;  // URLs the page asked the network for
  std::string screenshot;            // path of the PNG
};

// Lines chromium logs for the page's console (--enable-logging=stderr):
//   [...:INFO:CONSOLE:1] "x", source: file:///.../page.html (1)
//   [...:INFO:CONSOLE:1] "Uncaught Error: x", source: ...
// A blocked fetch (the page's Content-Security-Policy) is logged the same
// way. Failed loads without a CSP are not logged at all at --v=0, hence the
// net log. BrowserCheckSeesConsoleErrorsAndFetches proves both checks
// match what this chromium prints.
std::vector<std::string> console_lines(const std::string& err) {
  std::vector<std::string> out;
  std::istringstream in(err);
  for (std::string line; std::getline(in, line);)
    if (line.find(":CONSOLE") != std::string::npos || line.find("Uncaught") != std::string::npos) out.push_back(line);
  return out;
}

// URL requests from the page itself: chromium's own background requests
// (component updates, time, accounts) carry another network isolation key
// than a file:// page's.
std::vector<std::string> page_fetches(const std::string& net_log_path) {
  std::vector<std::string> out;
  const auto log = json::parse(read_file(net_log_path), nullptr, false);
  if (log.is_discarded() || !log.contains("events")) return {"unreadable net log " + net_log_path};
  for (const auto& e : log["events"]) {
    if (!e.contains("params") || !e["params"].is_object()) continue;
    const auto& p = e["params"];
    if (!p.contains("url") || !p["url"].is_string() || !p.value("network_isolation_key", "").starts_with("file://"))
      continue;
    if (std::find(out.begin(), out.end(), p["url"].get<std::string>()) == out.end()) out.push_back(p["url"]);
  }
  return out;
}

Rendered render(const std::string& page, const std::string& dir) {
  Rendered r;
  r.screenshot = dir + "/screenshot.png";
  const std::string profile = dir + "/chromium-profile", net_log = dir + "/net-log.json";
  r.run = run_process({kChromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                       "--disable-background-networking", "--disable-component-update", "--disable-sync",
                       "--hide-scrollbars", "--user-data-dir=" + profile, "--enable-logging=stderr", "--v=0",
                       "--log-net-log=" + net_log, "--screenshot=" + r.screenshot, "--window-size=1200,1600",
                       "--dump-dom", "file://" + page},
                      120s);
  r.console = console_lines(r.run.err);
  r.fetches = page_fetches(net_log);
  return r;
}

// Width and height from a PNG's IHDR chunk, {0, 0} if it is not a PNG.
std::pair<std::uint32_t, std::uint32_t> png_size(const std::string& path) {
  const auto b = read_file(path);
  if (b.size() < 24 || b.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) return {0, 0};
  auto be32 = [&](std::size_t at) {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(b[at])) << 24 |
           static_cast<std::uint32_t>(static_cast<unsigned char>(b[at + 1])) << 16 |
           static_cast<std::uint32_t>(static_cast<unsigned char>(b[at + 2])) << 8 |
           static_cast<std::uint32_t>(static_cast<unsigned char>(b[at + 3]));
  };
  return {be32(16), be32(20)};
}

std::string joined(const std::vector<std::string>& lines) {
  std::string s;
  for (const auto& l : lines) s += l + "\n";
  return s;
}

class ReportHtml : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(kChromium)) << kChromium << " is missing: the report's browser test needs Debian's "
                                       << "chromium. Install it with tools/bootstrap.sh.";
    ASSERT_FALSE(dir_.path.empty());
  }
  // `ferry migrate --report` against a stand-in VM that reports `status`.
  ProcessResult migrate(const migration::MigrationStatus& status, const std::string& page) {
    StandInVm vm(dir_.path + "/vm.sock", status);
    EXPECT_EQ(vm.error(), "");
    return run_process({FERRY_BIN, "migrate", "--vm", dir_.path + "/vm.sock", "--to", status.to, "--report", page,
                        "--insecure"},
                       60s);
  }
  TempDir dir_{"ferry-report-html"};
};

TEST_F(ReportHtml, MigrateWritesAPageABrowserRendersCleanly) {
  const auto status = example_migration();
  const std::string page = dir_.path + "/report.html";
  auto m = migrate(status, page);
  ASSERT_EQ(m.exit_code, 0) << m.describe();
  EXPECT_NE(m.err.find("ferry migrate: report written to " + page + "\n"), std::string::npos) << m.describe();

  auto r = render(page, dir_.path);
  ASSERT_EQ(r.run.exit_code, 0) << r.run.describe();
  EXPECT_EQ(count(r.run.out, "class=\"round-bar\""), status.rounds.size()) << r.run.out.substr(0, 4000);
  EXPECT_NE(r.run.out.find("<line class=\"marker\""), std::string::npos);
  EXPECT_TRUE(r.console.empty()) << joined(r.console);
  EXPECT_TRUE(r.fetches.empty()) << joined(r.fetches);
  EXPECT_EQ(png_size(r.screenshot), std::make_pair(1200u, 1600u)) << r.run.describe();

  // Kept in the build tree for people to look at (the test's directory goes).
  std::error_code ec;
  fs::create_directories(FERRY_REPORT_ARTIFACTS, ec);
  fs::copy_file(page, FERRY_REPORT_ARTIFACTS "/example-report.html", fs::copy_options::overwrite_existing, ec);
  fs::copy_file(r.screenshot, FERRY_REPORT_ARTIFACTS "/example-report.png", fs::copy_options::overwrite_existing, ec);
  std::cout << "rendered example: " << FERRY_REPORT_ARTIFACTS << "/example-report.{html,png}\n";
}

TEST_F(ReportHtml, FailedMigrationGetsAPageToo) {
  migration::MigrationStatus status;
  status.phase = migration::Phase::kFailed;
  status.to = "127.0.0.1:47123";
  status.error = "peer said: <script>console.error('injected')</script><img src=x onerror=alert(1)>&\"";
  const std::string page = dir_.path + "/failed.html";
  auto m = migrate(status, page);
  ASSERT_EQ(m.exit_code, 1) << m.describe();
  EXPECT_NE(m.err.find("report written to " + page), std::string::npos) << m.describe();

  auto r = render(page, dir_.path);
  ASSERT_EQ(r.run.exit_code, 0) << r.run.describe();
  EXPECT_EQ(count(r.run.out, "class=\"round-bar\""), 0u);
  EXPECT_EQ(r.run.out.find("<script"), std::string::npos) << "peer text became markup";
  EXPECT_EQ(r.run.out.find("<img"), std::string::npos) << "peer text became markup";
  EXPECT_NE(r.run.out.find("&lt;script&gt;console.error('injected')&lt;/script&gt;"), std::string::npos);
  EXPECT_TRUE(r.console.empty()) << joined(r.console);
  EXPECT_TRUE(r.fetches.empty()) << joined(r.fetches);
}

// The checks above must be able to fail: a page that logs, throws and
// fetches, rendered the same way, trips every one of them.
TEST_F(ReportHtml, BrowserCheckSeesConsoleErrorsAndFetches) {
  const std::string page = dir_.path + "/bad.html";
  std::ofstream(page) << "<!DOCTYPE html><html><body><p>bad</p><script>console.error('x-console')</script>"
                         "<script>throw new Error('x-uncaught')</script><img src=\"http://127.0.0.1:9/x.png\">"
                         "</body></html>";
  auto r = render(page, dir_.path);
  ASSERT_EQ(r.run.exit_code, 0) << r.run.describe();
  const auto console = joined(r.console);
  EXPECT_NE(console.find("x-console"), std::string::npos) << r.run.describe();
  EXPECT_NE(console.find("Uncaught Error: x-uncaught"), std::string::npos) << r.run.describe();
  EXPECT_EQ(r.fetches, std::vector<std::string>{"http://127.0.0.1:9/x.png"});
}

}  // namespace
}  // namespace ferry::test

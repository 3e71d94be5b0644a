#pragma once
// Driving a `ferry` VM process from a test through the real CLI client.
#include <chrono>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/e2e/process.hh"

namespace ferry::test {

inline std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// One API call through the CLI client with --json; null when it failed.
inline nlohmann::json ctl(const std::vector<std::string>& args) {
  std::vector<std::string> argv{FERRY_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back("--json");
  auto r = run_process(argv, std::chrono::seconds(120));
  if (r.exit_code != 0) return nullptr;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  return j.is_discarded() ? nlohmann::json(nullptr) : j;
}

inline nlohmann::json status(const std::string& api) { return ctl({"status", "--vm", api}); }

// Polls `ferry status` until pred holds; the last status either way.
inline nlohmann::json wait_status(const std::string& api, const std::function<bool(const nlohmann::json&)>& pred,
                                  std::chrono::seconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  nlohmann::json s;
  do {
    s = status(api);
    if (!s.is_null() && pred(s)) return s;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  } while (std::chrono::steady_clock::now() < end);
  return s;
}

inline std::uint64_t verified(const nlohmann::json& s) { return s["totals"]["verified"].get<std::uint64_t>(); }

// The last JSON line in a process's output: a `--json` command's final report.
inline nlohmann::json last_event(const std::string& out) {
  nlohmann::json last;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);)
    if (auto j = nlohmann::json::parse(line, nullptr, false); !j.is_discarded()) last = j;
  return last;
}

// The first JSON line with "event": name, or null.
inline nlohmann::json find_event(const std::string& out, const std::string& name) {
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);)
    if (auto j = nlohmann::json::parse(line, nullptr, false); !j.is_discarded() && j.is_object() && j.value("event", "") == name)
      return j;
  return nullptr;
}

}  // namespace ferry::test

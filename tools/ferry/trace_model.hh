#pragma once
// `ferry trace`'s arithmetic, apart from the kernel and the terminal:
// cumulative per-vCPU event counts read each interval become rates, and a
// short history of totals gives the events inside the working-set window.
#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ferry::cli::trace {

struct VcpuRate {
  std::uint32_t vcpu = 0;
  pid_t tid = 0;
  double pages_per_s = 0;
  std::uint64_t events = 0;  // cumulative
};

struct HotPage {
  std::uint32_t slot = 0;
  std::uint64_t page = 0;
  std::uint64_t count = 0;
};

struct VmRow {
  pid_t pid = 0;
  std::string name;        // the process's comm
  std::string source;      // "ring", "wp" or "" (no events yet)
  double pages_per_s = 0;  // this interval
  std::uint64_t events_in_window = 0;
  std::uint64_t working_set = 0;  // distinct pages dirtied in the window
  double window_s = 0;            // effective window (shorter right after start)
  double redirty_ratio = 0;       // events_in_window / working_set
  std::vector<VcpuRate> vcpus;
  std::vector<HotPage> hottest;
  std::string note;  // why there is nothing to show, when there is not
};

struct ConnRow {
  std::string local, remote;
  double srtt_ms = 0;
  std::uint32_t cwnd = 0, ssthresh = 0, mss = 0;
  std::uint64_t snd_wnd = 0;
  double capacity_bytes_per_s = 0;  // cwnd x mss / srtt
  double acked_bytes_per_s = 0;     // this interval
  std::uint64_t retransmits = 0;    // cumulative
  std::uint64_t retransmits_interval = 0;
};

struct Frame {
  double t_s = 0;  // since tracing started
  double interval_s = 0;
  std::vector<VmRow> vms;
  std::vector<ConnRow> connections;
  std::vector<std::uint16_t> ports;  // registered
  std::vector<std::string> notes;
};

// Total events of one VM over time: the window's share is the difference
// between now and the newest reading at or before now - window.
class WindowHistory {
 public:
  // Returns {events in window, effective window seconds}. Readings come
  // once an interval, with jitter: `slack` (half an interval) lets the one
  // nearest the window's start count, so the window is W +- slack.
  std::pair<std::uint64_t, double> add(double t_s, std::uint64_t total, double window_s, double slack);

 private:
  std::deque<std::pair<double, std::uint64_t>> readings_;
};

// Interval rate of a cumulative counter; the first reading has no rate.
class Rate {
 public:
  double update(std::uint64_t total, double interval_s);

 private:
  bool primed_ = false;
  std::uint64_t last_ = 0;
};

nlohmann::json to_json(const Frame& f);
std::string render(const Frame& f, bool show_vcpus);

}  // namespace ferry::cli::trace

// The control API (userspace/control/api.hh) over real UNIX sockets: a
// server thread runs ApiServer::serve, clients are control::call and a raw
// socket client for bytes call() would never send. Covers answers and ids,
// handler errors, malformed requests, ordering, the line limit, the ways
// serve() ends (handler, other thread, watched fd), listen()'s handling of
// existing paths, the socket file's mode and lifetime, and call()'s errors.
#include <gtest/gtest.h>

#include <poll.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "tests/temp_dir.hh"
#include "userspace/control/api.hh"
#include "userspace/control/migration_follower.hh"
#include "userspace/migration/status.hh"

namespace ferry::control {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

::testing::AssertionResult Mentions(const std::string& text, std::string_view part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "' does not mention '" << part << "'";
}

using test::TempDir;

sockaddr_un address_of(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.data(), std::min(path.size(), sizeof(a.sun_path) - 1));
  return a;
}

// A client that sends exactly the bytes it is given and reads answers line
// by line, each read bounded by a deadline (a guard, not a synchronisation).
class RawClient {
 public:
  explicit RawClient(const std::string& path) : fd_(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    const auto a = address_of(path);
    if (fd_ && ::connect(fd_.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a) < 0) fd_.reset();
  }
  bool connected() const { return fd_.valid(); }

  bool send(std::string_view s) {
    while (!s.empty()) {
      const ssize_t n = ::send(fd_.get(), s.data(), s.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return false;
      s.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }

  // The next line without its '\n'; nullopt on EOF, error or timeout.
  std::optional<std::string> read_line(std::chrono::milliseconds timeout = 10s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (buf_.find('\n') == std::string::npos) {
      if (!fill(deadline)) return std::nullopt;
    }
    const auto nl = buf_.find('\n');
    std::string line = buf_.substr(0, nl);
    buf_.erase(0, nl + 1);
    return line;
  }

  std::optional<json> read_json(std::chrono::milliseconds timeout = 10s) {
    auto line = read_line(timeout);
    if (!line) return std::nullopt;
    json j = json::parse(*line, nullptr, false);
    if (j.is_discarded()) return std::nullopt;
    return j;
  }

  // True once the server has closed the connection (EOF or reset) with no
  // further data; false if more bytes arrive or the deadline passes.
  bool closed_by_server(std::chrono::milliseconds timeout = 10s) {
    if (!buf_.empty()) return false;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    pollfd p{fd_.get(), POLLIN, 0};
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(left.count(), 0))) <= 0) return false;
    char c;
    const ssize_t n = ::recv(fd_.get(), &c, 1, 0);
    return n == 0 || (n < 0 && errno == ECONNRESET);
  }

 private:
  bool fill(std::chrono::steady_clock::time_point deadline) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd_.get(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
    char tmp[4096];
    const ssize_t n = ::recv(fd_.get(), tmp, sizeof tmp, 0);
    if (n <= 0) return false;
    buf_.append(tmp, static_cast<std::size_t>(n));
    return true;
  }

  UniqueFd fd_;
  std::string buf_;
};

// Holds a handler inside until the test releases it.
class Gate {
 public:
  void enter_and_wait() {
    std::unique_lock lock(mu_);
    entered_ = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return open_; });
  }
  bool wait_entered(std::chrono::seconds timeout = 10s) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return entered_; });
  }
  void release() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool entered_ = false;
  bool open_ = false;
};

class ControlApi : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path.empty()) << "mkdtemp failed";
    path_ = dir_.path + "/api.sock";
  }

  void TearDown() override {
    gate_.release();
    if (thread_.joinable()) {
      server_->stop();
      thread_.join();
    }
  }

  // listen() on path_ and serve() on a thread with `h` (default: handle()).
  void start(ApiServer::Handler h = {}) {
    auto s = ApiServer::listen(path_);
    ASSERT_TRUE(s) << s.error().what();
    server_.emplace(std::move(*s));
    serve(std::move(h));
  }

  void serve(ApiServer::Handler h = {}) {
    handler_ = h ? std::move(h) : [this](const std::string& cmd, const json& req) { return handle(cmd, req); };
    done_ = served_.get_future();
    thread_ = std::thread([this] { served_.set_value(server_->serve(handler_)); });
  }

  // Whether serve() returned (successfully) within `timeout`.
  bool serve_returned(std::chrono::seconds timeout = 10s) {
    if (done_.wait_for(timeout) != std::future_status::ready) return false;
    thread_.join();
    const Status s = done_.get();
    EXPECT_TRUE(s) << s.error().what();
    return true;
  }

  Result<json> handle(const std::string& cmd, const json& req) {
    ++calls_;
    if (cmd == "status") return json{{"state", "running"}, {"vcpus", 2}};
    if (cmd == "echo") return req.value("arg", json());
    if (cmd == "size") return json{{"bytes", req.dump().size()}};
    if (cmd == "fail") return fail("snapshot failed: disk full");
    if (cmd == "stop") {
      server_->stop();
      return json{{"stopping", true}};
    }
    if (cmd == "block") {
      gate_.enter_and_wait();
      return json{{"unblocked", true}};
    }
    return fail("unknown command '{}'", cmd);
  }

  TempDir dir_;
  std::string path_;
  std::optional<ApiServer> server_;
  ApiServer::Handler handler_;
  std::promise<Status> served_;
  std::future<Status> done_;
  std::thread thread_;
  Gate gate_;
  std::atomic<int> calls_{0};
};

TEST_F(ControlApi, CallReturnsTheHandlersResult) {
  start();
  auto r = call(path_, {{"cmd", "status"}});
  ASSERT_TRUE(r) << r.error().what();
  EXPECT_EQ(*r, (json{{"state", "running"}, {"vcpus", 2}}));
  auto e = call(path_, {{"cmd", "echo"}, {"arg", {1, "two", nullptr}}});
  ASSERT_TRUE(e) << e.error().what();
  EXPECT_EQ(*e, (json{1, "two", nullptr}));
}

TEST_F(ControlApi, EchoesNumberAndStringIdsVerbatim) {
  start();
  RawClient c(path_);
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.send(R"({"cmd":"status","id":7})" "\n"));
  auto a = c.read_json();
  ASSERT_TRUE(a);
  EXPECT_EQ((*a)["id"], 7);
  EXPECT_EQ((*a)["ok"], true);
  EXPECT_EQ((*a)["result"]["state"], "running");

  ASSERT_TRUE(c.send(R"({"cmd":"status","id":"req-abc"})" "\n"));
  auto b = c.read_json();
  ASSERT_TRUE(b);
  EXPECT_EQ((*b)["id"], "req-abc");
  EXPECT_EQ((*b)["ok"], true);

  ASSERT_TRUE(c.send(R"({"cmd":"status"})" "\n"));
  auto n = c.read_json();
  ASSERT_TRUE(n);
  EXPECT_FALSE(n->contains("id")) << n->dump();
  EXPECT_EQ((*n)["ok"], true);
}

TEST_F(ControlApi, HandlerErrorBecomesTheCallersError) {
  start();
  auto r = call(path_, {{"cmd", "fail"}});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message(), "snapshot failed: disk full");

  RawClient c(path_);
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.send(R"({"cmd":"fail","id":9})" "\n"));
  auto a = c.read_json();
  ASSERT_TRUE(a);
  EXPECT_EQ(*a, (json{{"id", 9}, {"ok", false}, {"error", "snapshot failed: disk full"}}));
}

TEST_F(ControlApi, MalformedRequestsGetAnErrorAndNeverReachTheHandler) {
  start();
  RawClient c(path_);
  ASSERT_TRUE(c.connected());
  const char* bad[] = {
      "{not json",          // not JSON at all
      "[1,2,3]",            // JSON, not an object
      "42",                 // likewise
      R"({"id":3})",        // no "cmd"
      R"({"cmd":5,"id":4})",  // "cmd" not a string
  };
  for (const char* line : bad) {
    ASSERT_TRUE(c.send(std::string(line) + "\n"));
    auto a = c.read_json();
    ASSERT_TRUE(a) << line;
    EXPECT_EQ((*a)["ok"], false) << line;
    ASSERT_TRUE((*a)["error"].is_string()) << line;
    EXPECT_TRUE(Mentions((*a)["error"].get<std::string>(), "malformed request")) << line;
  }
  EXPECT_EQ(calls_.load(), 0);
  // The connection survives bad requests.
  ASSERT_TRUE(c.send(R"({"cmd":"status","id":5})" "\n"));
  auto ok = c.read_json();
  ASSERT_TRUE(ok);
  EXPECT_EQ((*ok)["ok"], true);
  EXPECT_EQ((*ok)["id"], 5);
}

TEST_F(ControlApi, MalformedObjectStillEchoesItsId) {
  start();
  RawClient c(path_);
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.send(R"({"id":3})" "\n"));
  auto a = c.read_json();
  ASSERT_TRUE(a);
  EXPECT_EQ((*a)["id"], 3);
  EXPECT_EQ((*a)["ok"], false);
}

TEST_F(ControlApi, RequestsOnOneConnectionAreAnsweredInOrder) {
  start();
  RawClient c(path_);
  ASSERT_TRUE(c.connected());
  // Two requests and a blank line in one write, then one split over two.
  ASSERT_TRUE(c.send(R"({"cmd":"echo","arg":"first","id":1})" "\n  \n" R"({"cmd":"echo","arg":"second","id":2})" "\n"));
  ASSERT_TRUE(c.send(R"({"cmd":"echo","ar)"));
  ASSERT_TRUE(c.send(R"(g":"third","id":3})" "\n"));
  const char* want[] = {"first", "second", "third"};
  for (int i = 0; i < 3; ++i) {
    auto a = c.read_json();
    ASSERT_TRUE(a) << i;
    EXPECT_EQ((*a)["id"], i + 1);
    EXPECT_EQ((*a)["result"], want[i]);
  }
  EXPECT_FALSE(c.read_line(100ms)) << "the blank line got no answer";
  EXPECT_EQ(calls_.load(), 3);
}

TEST_F(ControlApi, AHalfSentRequestDoesNotHoldUpOtherClients) {
  start();
  RawClient slow(path_);
  ASSERT_TRUE(slow.connected());
  ASSERT_TRUE(slow.send(R"({"cmd":"sta)"));
  auto r = call(path_, {{"cmd", "status"}}, 10s);
  ASSERT_TRUE(r) << r.error().what();
  ASSERT_TRUE(slow.send(R"(tus","id":1})" "\n"));
  auto a = slow.read_json();
  ASSERT_TRUE(a);
  EXPECT_EQ((*a)["id"], 1);
  EXPECT_EQ((*a)["ok"], true);
}

TEST_F(ControlApi, OverlongLineGetsAnErrorAndTheConnectionIsClosed) {
  start();
  RawClient c(path_);
  ASSERT_TRUE(c.connected());
  // No newline ever comes: the server must give up past kMaxLineBytes.
  c.send(std::string(kMaxLineBytes + 1, 'a'));  // may fail once the server has hung up
  auto a = c.read_json();
  ASSERT_TRUE(a);
  EXPECT_EQ((*a)["ok"], false);
  EXPECT_EQ((*a)["error"], "request line longer than 65536 bytes");
  EXPECT_FALSE(a->contains("id"));
  EXPECT_TRUE(c.closed_by_server());
  EXPECT_EQ(calls_.load(), 0);
  // Other clients are unaffected.
  auto r = call(path_, {{"cmd", "status"}});
  EXPECT_TRUE(r) << r.error().what();
}

// A request line of exactly kMaxLineBytes (plus its newline) is served.
TEST_F(ControlApi, LineOfExactlyTheLimitIsServed) {
  start();
  RawClient c(path_);
  ASSERT_TRUE(c.connected());
  const std::string head = R"({"cmd":"size","id":1,"pad":")";
  const std::string tail = R"("})";
  const std::string line = head + std::string(kMaxLineBytes - head.size() - tail.size(), 'x') + tail;
  ASSERT_EQ(line.size(), kMaxLineBytes);
  ASSERT_TRUE(c.send(line + "\n"));
  auto a = c.read_json();
  ASSERT_TRUE(a);
  EXPECT_EQ((*a)["ok"], true) << a->dump();
  EXPECT_EQ((*a)["result"]["bytes"], line.size());
}

// Regression: the limit used to be checked only against what was still
// buffered after complete lines were taken out, so a line over the limit got
// through whenever its newline arrived in the same recv() (4096 bytes) as
// the overflow. Here the server is held in a handler while the whole line is
// queued, so its reads are exactly 16 x 4096 bytes (no newline, 65536 bytes)
// and then the last 101 bytes including the newline.
TEST_F(ControlApi, LineJustOverTheLimitIsRejectedEvenWhenItsNewlineArrivesWithTheOverflow) {
  start();
  RawClient c(path_);
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.send(R"({"cmd":"block","id":1})" "\n"));
  ASSERT_TRUE(gate_.wait_entered());
  const std::string head = R"({"cmd":"size","id":2,"pad":")";
  const std::string tail = R"("})";
  const std::size_t length = kMaxLineBytes + 100;
  const std::string line = head + std::string(length - head.size() - tail.size(), 'x') + tail;
  ASSERT_TRUE(c.send(line + "\n"));
  gate_.release();
  auto first = c.read_json();
  ASSERT_TRUE(first);
  EXPECT_EQ((*first)["id"], 1);
  auto second = c.read_json();
  ASSERT_TRUE(second);
  EXPECT_EQ((*second)["ok"], false) << "a " << length << "-byte line was served: " << second->dump();
  EXPECT_EQ((*second)["error"], "request line longer than 65536 bytes");
  EXPECT_TRUE(c.closed_by_server(2s));
}

TEST_F(ControlApi, HandlerCallingStopEndsServeAfterItsAnswer) {
  start();
  auto r = call(path_, {{"cmd", "stop"}}, 10s);
  ASSERT_TRUE(r) << "the answer must be sent before serve() ends: " << r.error().what();
  EXPECT_EQ(*r, (json{{"stopping", true}}));
  EXPECT_TRUE(serve_returned());
}

TEST_F(ControlApi, StopFromAnotherThreadEndsServe) {
  start();
  ASSERT_TRUE(call(path_, {{"cmd", "status"}}));  // serving
  server_->stop();
  EXPECT_TRUE(serve_returned());
}

TEST_F(ControlApi, StopBeforeServeMakesServeReturnAtOnce) {
  auto s = ApiServer::listen(path_);
  ASSERT_TRUE(s) << s.error().what();
  server_.emplace(std::move(*s));
  server_->stop();
  serve();
  EXPECT_TRUE(serve_returned());
}

TEST_F(ControlApi, WatchedEventfdRunsItsCallbackOnTheServeThread) {
  auto s = ApiServer::listen(path_);
  ASSERT_TRUE(s) << s.error().what();
  server_.emplace(std::move(*s));
  UniqueFd efd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  ASSERT_TRUE(efd);
  std::atomic<int> fired{0};
  std::thread::id cb_thread;
  server_->watch(efd.get(), [&] {
    std::uint64_t v = 0;
    EXPECT_EQ(::read(efd.get(), &v, sizeof v), static_cast<ssize_t>(sizeof v));
    EXPECT_EQ(v, 1u);
    cb_thread = std::this_thread::get_id();
    ++fired;
    server_->stop();
  });
  serve();
  const auto serve_thread = thread_.get_id();
  ASSERT_TRUE(call(path_, {{"cmd", "status"}})) << "serving, callback not yet run";
  EXPECT_EQ(fired.load(), 0);
  const std::uint64_t one = 1;
  ASSERT_EQ(::write(efd.get(), &one, sizeof one), static_cast<ssize_t>(sizeof one));
  ASSERT_TRUE(serve_returned());
  EXPECT_EQ(fired.load(), 1);
  EXPECT_EQ(cb_thread, serve_thread);
}

TEST_F(ControlApi, ListenRefusesAPathALiveServerServes) {
  start();
  auto second = ApiServer::listen(path_);
  ASSERT_FALSE(second);
  EXPECT_TRUE(Mentions(second.error().what(), "API socket " + path_ + ": another process is serving it"));
  // The first server keeps its socket and keeps serving.
  EXPECT_TRUE(fs::is_socket(path_));
  auto r = call(path_, {{"cmd", "status"}});
  EXPECT_TRUE(r) << r.error().what();
}

TEST_F(ControlApi, ListenReplacesAStaleSocketFile) {
  {
    UniqueFd dead(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    ASSERT_TRUE(dead);
    const auto a = address_of(path_);
    ASSERT_EQ(::bind(dead.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a), 0);
  }  // closed without unlink: a server that died
  ASSERT_TRUE(fs::is_socket(path_));
  start();
  auto r = call(path_, {{"cmd", "status"}});
  EXPECT_TRUE(r) << r.error().what();
}

TEST_F(ControlApi, ListenRefusesARegularFile) {
  { std::ofstream(path_) << "not a socket"; }
  auto s = ApiServer::listen(path_);
  ASSERT_FALSE(s);
  EXPECT_TRUE(Mentions(s.error().what(), "API socket " + path_ + ": exists and is not a socket"));
  std::ifstream in(path_);
  std::string content;
  std::getline(in, content);
  EXPECT_EQ(content, "not a socket") << "the file was left alone";
}

TEST_F(ControlApi, SocketIsOwnerOnlyAndRemovedWithTheServer) {
  const mode_t old = ::umask(0);  // the server must not depend on the umask
  auto s = ApiServer::listen(path_);
  ::umask(old);
  ASSERT_TRUE(s) << s.error().what();
  struct stat st {};
  ASSERT_EQ(::lstat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(s->path(), path_);
  std::optional<ApiServer> owner(std::move(*s));
  s = std::unexpected(Error("moved"));  // destroys the moved-from server
  EXPECT_TRUE(fs::is_socket(path_)) << "a moved-from server leaves the socket alone";
  owner.reset();
  EXPECT_FALSE(fs::exists(path_)) << "destroying the server unlinks its socket";
}

TEST_F(ControlApi, CallToAMissingSocketNamesThePath) {
  const std::string missing = dir_.path + "/nobody.sock";
  auto r = call(missing, {{"cmd", "status"}}, 1s);
  ASSERT_FALSE(r);
  EXPECT_TRUE(Mentions(r.error().what(), "connect to " + missing));
  EXPECT_TRUE(Mentions(r.error().what(), "is the VM running?"));
}

TEST_F(ControlApi, CallTimesOutWhenTheHandlerTakesLonger) {
  start();
  const auto t0 = std::chrono::steady_clock::now();
  auto r = call(path_, {{"cmd", "block"}}, 200ms);
  const auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message(), "no answer from " + path_ + " within 200 ms");
  // Never before the deadline (the time left is rounded up for poll()).
  EXPECT_GE(took, 200ms);
  EXPECT_LT(took, 5s);
  EXPECT_TRUE(gate_.wait_entered()) << "the request did reach the handler";
  // The handler's answer goes to a client that left; the server carries on.
  gate_.release();
  auto after = call(path_, {{"cmd", "status"}}, 10s);
  EXPECT_TRUE(after) << after.error().what();
}

TEST_F(ControlApi, AClientThatNeverReadsItsAnswersBlocksNobody) {
  start();
  // A non-blocking client of its own: the server may (rightly) stop reading
  // from it, and the test must not block on that.
  UniqueFd greedy(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path_.c_str(), sizeof a.sun_path - 1);
  ASSERT_EQ(::connect(greedy.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  // Far more answers than a socket buffer holds, never read.
  std::string burst;
  for (int i = 0; i < 20000; ++i) burst += R"({"cmd":"status"})" "\n";
  std::size_t sent = 0;
  for (int spins = 0; sent < burst.size() && spins < 200; ++spins) {
    const ssize_t n = ::send(greedy.get(), burst.data() + sent, burst.size() - sent, MSG_NOSIGNAL);
    if (n > 0) sent += static_cast<std::size_t>(n);
    else std::this_thread::sleep_for(1ms);  // EAGAIN: let the server drain some
  }
  // Thousands of answers: more than the socket buffers hold.
  ASSERT_GT(sent, 100000u);
  // Others are still served, and the server still stops on request.
  auto r = call(path_, {{"cmd", "status"}}, 10s);
  ASSERT_TRUE(r) << r.error().what();
  server_->stop();
  EXPECT_TRUE(serve_returned()) << "serve() was stuck writing to a client that does not read";
}

// A migration with many rounds: the whole status would be ~700 KB, ten
// times the line limit (what `ferry migrate` died of). Each `migration`
// answer carries at most kRoundsPerAnswer rounds; the follower pages
// through them once, then asks only for new rounds.
TEST_F(ControlApi, AMigrationWithManyRoundsIsFollowedInBoundedAnswers) {
  migration::MigrationStatus st;
  st.phase = migration::Phase::kPrecopy;
  auto add_rounds = [&](std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
      migration::RoundFigures f;
      f.round = static_cast<std::uint32_t>(st.rounds.size());
      f.pages = 1000 + st.rounds.size();
      f.reason = std::string(200, 'r');
      f.throttle = std::vector<double>(8, 0.5);
      f.dirtied_per_vcpu = std::vector<std::uint64_t>(8, 123456);
      st.rounds.push_back(f);
    }
  };
  add_rounds(1500);
  ASSERT_GT(migration::to_json(st).dump().size(), 10 * kMaxLineBytes) << "the test must outgrow the old limit";
  std::mutex mu;
  std::vector<std::size_t> answer_bytes, asked_from;
  start([&](const std::string& cmd, const json& req) -> Result<json> {
    if (cmd != "migration") return fail("unknown command {}", cmd);
    std::lock_guard lock(mu);
    const auto from = req.value("since_round", std::size_t{0});
    auto j = migration::to_json(st, from, migration::kRoundsPerAnswer);
    answer_bytes.push_back(j.dump().size());
    asked_from.push_back(from);
    return j;
  });
  MigrationFollower follow(path_);
  auto first = follow.poll();
  ASSERT_TRUE(first) << first.error().what();
  ASSERT_EQ((*first)["rounds"].size(), 1500u);
  for (std::size_t i = 0; i < 1500; ++i) ASSERT_EQ((*first)["rounds"][i]["pages"], 1000 + i) << i;
  EXPECT_FALSE(first->contains("rounds_total"));
  {
    std::lock_guard lock(mu);
    EXPECT_EQ(answer_bytes.size(), (1500 + migration::kRoundsPerAnswer - 1) / migration::kRoundsPerAnswer);
    for (auto b : answer_bytes) EXPECT_LT(b, kMaxLineBytes);
    answer_bytes.clear();
    asked_from.clear();
    add_rounds(3);
  }
  // A later poll fetches only the three new rounds, in one answer.
  auto next = follow.poll();
  ASSERT_TRUE(next) << next.error().what();
  EXPECT_EQ((*next)["rounds"].size(), 1503u);
  EXPECT_EQ((*next)["rounds"].back()["pages"], 2502);
  std::lock_guard lock(mu);
  EXPECT_EQ(asked_from, std::vector<std::size_t>{1500});
  // The full report keeps its shape: every round, no paging fields.
  const auto whole = migration::to_json(st);
  EXPECT_EQ(whole["rounds"].size(), 1503u);
  EXPECT_FALSE(whole.contains("rounds_total"));
}

}  // namespace
}  // namespace ferry::control

#include "kvm/devices/virtio/queue.hh"

#include <atomic>
#include <bit>
#include <cstring>

namespace ferry::kvm::virtio {
namespace {

constexpr std::uint16_t kDescNext = 1, kDescWrite = 2, kDescIndirect = 4;
constexpr std::uint16_t kAvailNoInterrupt = 1;
constexpr std::uint16_t kUsedNoNotify = 1;
constexpr std::size_t kDescBytes = 16, kUsedElemBytes = 8;

// The indices are shared with vCPUs running the driver on other CPUs:
// every access is atomic, the orders are those of 2.7.13 and 2.7.14.
std::uint16_t load16(const std::byte* p, std::memory_order o = std::memory_order_relaxed) {
  return std::atomic_ref<std::uint16_t>(*reinterpret_cast<std::uint16_t*>(const_cast<std::byte*>(p))).load(o);
}
void store16(std::byte* p, std::uint16_t v, std::memory_order o = std::memory_order_relaxed) {
  std::atomic_ref<std::uint16_t>(*reinterpret_cast<std::uint16_t*>(p)).store(v, o);
}

struct Desc {
  std::uint64_t addr;
  std::uint32_t len;
  std::uint16_t flags, next;
};
Desc read_desc(const std::byte* table, std::uint32_t i) {
  Desc d;
  std::memcpy(&d.addr, table + i * kDescBytes, 8);
  std::memcpy(&d.len, table + i * kDescBytes + 8, 4);
  std::memcpy(&d.flags, table + i * kDescBytes + 12, 2);
  std::memcpy(&d.next, table + i * kDescBytes + 14, 2);
  return d;
}

std::uint64_t avail_bytes(std::uint16_t size) { return 4 + 2ull * size + 2; }
std::uint64_t used_bytes(std::uint16_t size) { return 4 + kUsedElemBytes * size + 2; }

}  // namespace

Result<SplitQueue> SplitQueue::open(std::string name, const GuestAccess& mem, QueueLayout layout,
                                    std::uint16_t max_size, bool event_idx, bool indirect, QueuePosition at) {
  if (layout.size == 0 || !std::has_single_bit(layout.size) || layout.size > max_size)
    return fail("{}: queue size {} (must be a power of two, 1..{})", name, layout.size, max_size);
  // Alignment from 2.7: descriptors 16, available ring 2, used ring 4.
  if (layout.desc % 16 || layout.avail % 2 || layout.used % 4)
    return fail("{}: misaligned rings (descriptors {:#x}, available {:#x}, used {:#x})", name, layout.desc,
                layout.avail, layout.used);
  SplitQueue q;
  auto desc = mem.host_range(layout.desc, kDescBytes * layout.size);
  if (!desc) return std::unexpected(std::move(desc.error()).context(fmt::format("{}: descriptor table", name)));
  auto avail = mem.host_range(layout.avail, avail_bytes(layout.size));
  if (!avail) return std::unexpected(std::move(avail.error()).context(fmt::format("{}: available ring", name)));
  auto used = mem.host_range(layout.used, used_bytes(layout.size));
  if (!used) return std::unexpected(std::move(used.error()).context(fmt::format("{}: used ring", name)));
  q.name_ = std::move(name);
  q.mem_ = &mem;
  q.layout_ = layout;
  q.pos_ = at;
  q.event_idx_ = event_idx;
  q.indirect_ = indirect;
  q.desc_ = *desc;
  q.avail_ = *avail;
  q.used_ = *used;
  return q;
}

std::uint16_t SplitQueue::avail_idx() const {
  // Acquire: the ring entries and descriptors written before the index
  // are read after it.
  return load16(avail_ + 2, std::memory_order_acquire);
}

bool SplitQueue::want_kick_when_more(std::uint16_t seen) {
  if (event_idx_) {
    // The driver kicks when its index passes avail_event: set it to where
    // the index was.
    store16(used_ + 4 + kUsedElemBytes * layout_.size, seen, std::memory_order_release);
    mem_->mark_written(layout_.used + 4 + kUsedElemBytes * layout_.size, 2);
    kicks_ = false;  // pop() must not move it back down until then
  } else {
    store16(used_, 0, std::memory_order_release);  // every addition kicks
    mem_->mark_written(layout_.used, 2);
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return avail_idx() != seen;
}

bool SplitQueue::has_available() const { return avail_idx() != pos_.next_avail; }

Result<std::optional<Chain>> SplitQueue::pop() {
  const std::uint16_t idx = avail_idx();
  const std::uint16_t pending = static_cast<std::uint16_t>(idx - pos_.next_avail);
  if (pending == 0) return std::nullopt;
  if (pending > layout_.size)
    return fail("{}: the driver made {} buffers available on a queue of {} (available index {}, device at {})", name_,
                pending, layout_.size, idx, pos_.next_avail);
  const std::uint16_t slot = pos_.next_avail & (layout_.size - 1);
  const std::uint16_t head = load16(avail_ + 4 + 2 * slot);
  Chain c;
  c.head = head;
  if (auto ok = take_chain(head, c); !ok) return std::unexpected(ok.error());
  ++pos_.next_avail;
  if (event_idx_ && kicks_) {
    store16(used_ + 4 + kUsedElemBytes * layout_.size, pos_.next_avail, std::memory_order_release);
    mem_->mark_written(layout_.used + 4 + kUsedElemBytes * layout_.size, 2);
  }
  return c;
}

Status SplitQueue::take_chain(std::uint16_t head, Chain& out) const {
  const std::byte* table = desc_;
  std::uint32_t entries = layout_.size;
  std::uint32_t i = head, visited = 0;
  bool indirect_table = false, writable = false;
  auto bad = [&](std::string what) {
    return fail("{}: chain at {}: {}{}", name_, head, what, indirect_table ? " (in its indirect table)" : "");
  };
  for (;;) {
    if (i >= entries) return bad(fmt::format("descriptor {} is outside the table of {}", i, entries));
    // More descriptors than the table holds can only be a loop.
    if (++visited > entries) return bad(fmt::format("loops (more than {} descriptors)", entries));
    const Desc d = read_desc(table, i);
    if (d.flags & kDescIndirect) {
      if (!indirect_) return bad("indirect descriptor, but INDIRECT_DESC was not negotiated");
      if (indirect_table) return bad("nested indirect table");
      if (visited != 1) return bad("indirect descriptor inside a chain");
      if (d.flags & kDescNext) return bad("indirect descriptor with NEXT set");
      if (d.len == 0 || d.len % kDescBytes || d.len / kDescBytes > kMaxIndirect)
        return bad(fmt::format("indirect table of {} bytes (a multiple of 16, at most {} entries)", d.len,
                               kMaxIndirect));
      auto t = mem_->host_range(d.addr, d.len);
      if (!t) return bad(fmt::format("indirect table: {}", t.error().what()));
      table = *t;
      entries = d.len / kDescBytes;
      indirect_table = true;
      i = 0;
      visited = 0;
      continue;
    }
    if (d.len > 0) {
      auto p = mem_->host_range(d.addr, d.len);
      if (!p) return bad(fmt::format("buffer: {}", p.error().what()));
      if (d.flags & kDescWrite) {
        writable = true;
        out.writable.push_back({d.addr, d.len, *p});
        out.writable_bytes += d.len;
      } else {
        if (writable) return bad("a device-readable buffer after a device-writable one");
        out.readable.push_back({d.addr, d.len, *p});
        out.readable_bytes += d.len;
      }
    }
    if (!(d.flags & kDescNext)) return {};
    i = d.next;
  }
}

Status SplitQueue::push(std::uint16_t head, std::uint32_t written) {
  if (head >= layout_.size) return fail("{}: pushing head {} on a queue of {}", name_, head, layout_.size);
  const std::uint16_t slot = pos_.next_used & (layout_.size - 1);
  std::byte* elem = used_ + 4 + kUsedElemBytes * slot;
  const std::uint32_t id = head;
  std::memcpy(elem, &id, 4);
  std::memcpy(elem + 4, &written, 4);
  mem_->mark_written(layout_.used + 4 + kUsedElemBytes * slot, kUsedElemBytes);
  ++pos_.next_used;
  // Release: the element (and the buffer's contents) before the index.
  store16(used_ + 2, pos_.next_used, std::memory_order_release);
  mem_->mark_written(layout_.used + 2, 2);
  return {};
}

bool SplitQueue::should_interrupt() {
  // The used index is published before the driver's wish is read (2.7.10):
  // otherwise a driver that just asked for an interrupt could miss it.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const std::uint16_t old = pos_.signalled_used, now = pos_.next_used;
  if (old == now) return false;
  pos_.signalled_used = now;
  if (event_idx_) {
    const std::uint16_t used_event = load16(avail_ + 4 + 2 * layout_.size);
    // vring_need_event: did the index cross used_event since the last one?
    return static_cast<std::uint16_t>(now - used_event - 1) < static_cast<std::uint16_t>(now - old);
  }
  return !(load16(avail_) & kAvailNoInterrupt);
}

bool SplitQueue::want_kicks(bool on) {
  kicks_ = on;
  if (event_idx_) {
    if (on) {
      store16(used_ + 4 + kUsedElemBytes * layout_.size, pos_.next_avail, std::memory_order_release);
      mem_->mark_written(layout_.used + 4 + kUsedElemBytes * layout_.size, 2);
    }
  } else {
    store16(used_, on ? 0 : kUsedNoNotify, std::memory_order_release);
    mem_->mark_written(layout_.used, 2);
  }
  // Published before the index is read again: a buffer made available
  // while kicks were off is seen here, or its kick comes.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return has_available();
}

namespace {
// Calls fn(buffer, offset in it, bytes, position in the caller's data) for
// each piece of `buffers` that [offset, offset + len) covers; returns the
// bytes covered.
template <class F>
std::size_t for_each_piece(const std::vector<Buffer>& buffers, std::uint64_t offset, std::size_t len, F&& fn) {
  std::size_t done = 0;
  for (const Buffer& b : buffers) {
    if (done == len) break;
    if (offset >= b.len) {
      offset -= b.len;
      continue;
    }
    const std::size_t n = std::min<std::uint64_t>(b.len - offset, len - done);
    fn(b, offset, n, done);
    done += n;
    offset = 0;
  }
  return done;
}
}  // namespace

std::size_t Chain::read(std::uint64_t offset, std::span<std::byte> out) const {
  return for_each_piece(readable, offset, out.size(), [&](const Buffer& b, std::uint64_t at, std::size_t n,
                                                          std::size_t pos) { std::memcpy(out.data() + pos, b.host + at, n); });
}

Status Chain::write(const GuestAccess& mem, std::uint64_t offset, std::span<const std::byte> bytes) const {
  if (offset + bytes.size() > writable_bytes)
    return fail("chain at {}: {} bytes at offset {} do not fit its {} writable bytes", head, bytes.size(), offset,
                writable_bytes);
  for_each_piece(writable, offset, bytes.size(), [&](const Buffer& b, std::uint64_t at, std::size_t n, std::size_t pos) {
    std::memcpy(b.host + at, bytes.data() + pos, n);
    // After the copy: a harvest in between reports the page now and again
    // later, never not at all (as GuestAccess::write).
    mem.mark_written(b.gpa + at, n);
  });
  return {};
}

}  // namespace ferry::kvm::virtio

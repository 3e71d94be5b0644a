#include "kvm/long_mode.hh"

#include <algorithm>
#include <cstring>
#include <vector>

#include "kvm/dirty_tracker.hh"
#include "kvm/guest_memory.hh"
#include "kvm/vcpu.hh"

namespace ferry::kvm {
namespace {

constexpr std::uint64_t kCode64 = 0x00af9b000000ffffull;  // present, DPL 0, execute/read, L=1, G=1
constexpr std::uint64_t kData = 0x00cf93000000ffffull;    // present, DPL 0, read/write, D/B=1, G=1
constexpr std::uint64_t kTwoMiB = 2ull << 20;

template <class T>
void put(GuestRegion& ram, std::uint64_t gpa, const T& v, DirtyTracker* tracker) {
  std::memcpy(ram.host_at(gpa), &v, sizeof v);
  if (tracker) tracker->mark_vmm_write(gpa, sizeof v);
}

}  // namespace

void write_long_mode_tables(GuestRegion& ram, const LongModeLayout& l, DirtyTracker* tracker) {
  const std::size_t entries = std::max(l.code_selector, l.data_selector) / 8 + 1;
  std::vector<std::uint64_t> gdt(entries, 0);
  gdt[l.code_selector / 8] = kCode64;
  gdt[l.data_selector / 8] = kData;
  std::memcpy(ram.host_at(l.gdt_gpa), gdt.data(), gdt.size() * 8);
  if (tracker) tracker->mark_vmm_write(l.gdt_gpa, gdt.size() * 8);
  constexpr std::uint64_t kP = 1, kRW = 2, kPS = 0x80;
  put(ram, l.pml4_gpa, l.pdpt_gpa | kP | kRW, tracker);
  for (std::uint64_t i = 0; i < 4; ++i) put(ram, l.pdpt_gpa + i * 8, (l.pd_gpa + i * kPageSize) | kP | kRW, tracker);
  for (std::uint64_t i = 0; i < 4 * 512; ++i) put(ram, l.pd_gpa + i * 8, (i * kTwoMiB) | kP | kRW | kPS, tracker);
}

Status enter_long_mode(Vcpu& vcpu, const LongModeLayout& l, const kvm_regs& regs) {
  auto sregs = vcpu.get_sregs();
  if (!sregs) return std::unexpected(sregs.error());
  kvm_segment code{};
  code.limit = 0xffffffff;
  code.selector = l.code_selector;
  code.type = 11;  // execute/read, accessed
  code.present = 1;
  code.s = 1;
  code.l = 1;  // 64-bit
  code.g = 1;
  kvm_segment data = code;
  data.selector = l.data_selector;
  data.type = 3;  // read/write, accessed
  data.l = 0;
  data.db = 1;
  sregs->cs = code;
  sregs->ds = sregs->es = sregs->fs = sregs->gs = sregs->ss = data;
  sregs->gdt.base = l.gdt_gpa;
  sregs->gdt.limit = static_cast<std::uint16_t>((std::max(l.code_selector, l.data_selector) / 8 + 1) * 8 - 1);
  sregs->cr3 = l.pml4_gpa;
  sregs->cr4 = 0x20;                      // PAE
  sregs->cr0 = 0x80000001 | 0x10 | 0x20;  // PG | PE | ET | NE
  sregs->efer = 0x500;                    // LME | LMA
  if (auto ok = vcpu.set_sregs(*sregs); !ok) return ok;
  return vcpu.set_regs(regs);
}

}  // namespace ferry::kvm

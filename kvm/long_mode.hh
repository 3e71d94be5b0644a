#pragma once
// Entering 64-bit mode without firmware, as both Ferry's guests start: a
// flat GDT, identity page tables for the first 4 GiB (2 MiB pages), and the
// special registers of a CPU that has just enabled long mode.
#include <linux/kvm.h>

#include <cstdint>

#include "userspace/base/error.hh"

namespace ferry::kvm {

class DirtyTracker;
class GuestRegion;
class Vcpu;

struct LongModeLayout {
  std::uint64_t gdt_gpa = 0;
  std::uint16_t code_selector = 0;  // a 64-bit code segment here
  std::uint16_t data_selector = 0;  // a flat data segment here
  std::uint64_t pml4_gpa = 0;       // then one page each: PDPT, 4 PDs
  std::uint64_t pdpt_gpa = 0;
  std::uint64_t pd_gpa = 0;
};

// Writes the GDT (null descriptors below the selectors) and the page
// tables into `ram`; marks those writes dirty in `tracker` when given.
void write_long_mode_tables(GuestRegion& ram, const LongModeLayout& l, DirtyTracker* tracker = nullptr);

// Loads segments, GDT, CR0/CR3/CR4/EFER for long mode, then `regs`.
Status enter_long_mode(Vcpu& vcpu, const LongModeLayout& l, const kvm_regs& regs);

}  // namespace ferry::kvm

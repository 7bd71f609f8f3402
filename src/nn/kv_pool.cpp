// nn: the paged KV pool (kv_pool.h): block bookkeeping under one mutex, storage in chunks
// that never move, sequences as tables of block references.
#include "nn/kv_pool.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "common/error.h"

namespace amanuensis::nn {
namespace {

constexpr std::int64_t kChunkBytes = std::int64_t{4} << 20;

}  // namespace

std::shared_ptr<KvPool> KvPool::create(int layers, std::int64_t d, std::int64_t max_positions) {
  if (layers <= 0 || d <= 0 || max_positions <= 0) throw InternalError("a KV pool needs layers, features and positions");
  return std::make_shared<KvPool>(Key{}, layers, d, max_positions);
}

KvPool::KvPool(Key, int layers, std::int64_t d, std::int64_t max_positions)
    : layers_(layers),
      d_(d),
      max_positions_(max_positions),
      block_floats_(std::int64_t{2} * layers * kBlockPositions * d),
      blocks_per_chunk_(std::max<std::int64_t>(1, kChunkBytes / (block_floats_ * std::int64_t{sizeof(float)}))) {
  stats_.block_positions = kBlockPositions;
  stats_.block_bytes = block_bytes();
}

KvSequence KvPool::new_sequence() {
  add_sequences(1);
  return KvSequence(shared_from_this());
}

KvPoolStats KvPool::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void KvPool::add_sequences(int n) {
  std::lock_guard lock(mutex_);
  stats_.sequences += n;
}

std::int64_t KvPool::sequence_bytes(std::int64_t positions) const {
  const std::int64_t held = std::clamp<std::int64_t>(positions, 0, max_positions_);
  return (held + kBlockPositions - 1) / kBlockPositions * block_bytes();
}

AudioCharge KvPool::charge_audio(std::int64_t bytes) { return AudioCharge(shared_from_this(), bytes); }

void KvPool::add_audio(std::int64_t bytes, int entries) {
  std::lock_guard lock(mutex_);
  stats_.audio_bytes += bytes;
  stats_.audio_entries += entries;
  note_peaks_locked();
}

AudioCharge::AudioCharge(std::shared_ptr<KvPool> pool, std::int64_t bytes) : pool_(std::move(pool)), bytes_(bytes) {
  if (pool_) pool_->add_audio(bytes_, 1);
}

AudioCharge::AudioCharge(const AudioCharge& other) : AudioCharge(other.pool_, other.bytes_) {}

AudioCharge& AudioCharge::operator=(const AudioCharge& other) {
  if (this != &other) *this = AudioCharge(other);
  return *this;
}

AudioCharge::AudioCharge(AudioCharge&& other) noexcept
    : pool_(std::move(other.pool_)), bytes_(std::exchange(other.bytes_, 0)) {}

AudioCharge& AudioCharge::operator=(AudioCharge&& other) noexcept {
  if (this != &other) {
    drop();
    pool_ = std::move(other.pool_);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

AudioCharge::~AudioCharge() { drop(); }

void AudioCharge::drop() noexcept {
  if (!pool_) return;
  try {
    pool_->add_audio(-bytes_, -1);
  } catch (...) {  // a mutex that cannot lock: the count is lost, not the memory
  }
  pool_.reset();
  bytes_ = 0;
}

KvPool::BlockRef KvPool::allocate() {
  std::lock_guard lock(mutex_);
  return allocate_locked();
}

KvPool::BlockRef KvPool::allocate_locked() {
  if (free_.empty()) add_chunk_locked();
  const BlockRef block = free_.back();
  free_.pop_back();
  auto& chunk = chunks_[chunk_of(block.id)];
  if (chunk.free_blocks-- == blocks_per_chunk_) --spare_chunks_;
  blocks_[static_cast<std::size_t>(block.id)] = {1, 0};
  ++stats_.blocks_in_use;
  stats_.used_bytes += block_bytes();
  note_peaks_locked();
  return block;
}

void KvPool::add_chunk_locked() {
  std::size_t index = chunks_.size();
  if (!vacant_.empty()) {
    index = vacant_.back();
    vacant_.pop_back();
  } else {
    chunks_.emplace_back();
    blocks_.resize(blocks_.size() + static_cast<std::size_t>(blocks_per_chunk_));
  }
  // uninitialised: a page costs memory only once a position in it is written
  auto& chunk = chunks_[index];
  chunk.data = std::make_unique_for_overwrite<float[]>(static_cast<std::size_t>(blocks_per_chunk_ * block_floats_));
  chunk.free_blocks = blocks_per_chunk_;
  ++spare_chunks_;
  const auto first = static_cast<BlockId>(static_cast<std::int64_t>(index) * blocks_per_chunk_);
  // pushed last to first, so the chunk's first block is taken first
  for (std::int64_t i = blocks_per_chunk_ - 1; i >= 0; --i)
    free_.push_back({static_cast<BlockId>(first + i), chunk.data.get() + i * block_floats_});
  stats_.capacity_bytes += chunk_bytes();
}

void KvPool::return_chunk_locked(std::size_t index) {
  const auto first = static_cast<BlockId>(static_cast<std::int64_t>(index) * blocks_per_chunk_);
  const auto end = static_cast<BlockId>(first + blocks_per_chunk_);
  std::erase_if(free_, [&](const BlockRef& b) { return b.id >= first && b.id < end; });
  chunks_[index].data.reset();
  chunks_[index].free_blocks = 0;
  vacant_.push_back(index);
  stats_.capacity_bytes -= chunk_bytes();
  ++stats_.chunks_returned;
}

void KvPool::note_peaks_locked() {
  stats_.peak_used_bytes = std::max(stats_.peak_used_bytes, stats_.used_bytes);
  stats_.peak_audio_bytes = std::max(stats_.peak_audio_bytes, stats_.audio_bytes);
  stats_.peak_total_bytes = std::max(stats_.peak_total_bytes, stats_.used_bytes + stats_.audio_bytes);
}

void KvPool::release_locked(BlockId id) {
  auto& state = blocks_.at(static_cast<std::size_t>(id));
  if (state.refs <= 0) throw InternalError("a KV block released more often than it was held");
  if (--state.refs > 0) return;
  const std::size_t index = chunk_of(id);
  auto& chunk = chunks_[index];
  free_.push_back({id, chunk.data.get() + (id % blocks_per_chunk_) * block_floats_});
  --stats_.blocks_in_use;
  stats_.used_bytes -= block_bytes();
  if (++chunk.free_blocks < blocks_per_chunk_) return;
  // Wholly free: kept as the spare (the next sequences start there without a page fault),
  // or given back when a spare is already held.
  if (spare_chunks_ >= 1) {
    return_chunk_locked(index);
  } else {
    ++spare_chunks_;
  }
}

void KvPool::release(std::span<const BlockRef> blocks) {
  std::lock_guard lock(mutex_);
  for (const auto& block : blocks) release_locked(block.id);
}

void KvPool::share(std::span<const BlockRef> blocks, std::int64_t positions) {
  std::lock_guard lock(mutex_);
  for (const auto& block : blocks) ++blocks_.at(static_cast<std::size_t>(block.id)).refs;
  ++stats_.forks;
  ++stats_.sequences;
  stats_.blocks_shared_at_fork += blocks.size();
  stats_.positions_shared_at_fork += static_cast<std::uint64_t>(positions);
}

void KvPool::copy_slots(const BlockRef& from, const BlockRef& to, std::int64_t slots) const {
  // each layer's keys, then its values: kBlockPositions rows of d, the first `slots` filled
  for (std::int64_t part = 0; part < 2 * layers_; ++part) {
    const std::int64_t at = part * kBlockPositions * d_;
    std::memcpy(to.data + at, from.data + at, static_cast<std::size_t>(slots * d_) * sizeof(float));
  }
}

KvPool::BlockRef KvPool::writable(BlockRef block, std::int64_t slot) {
  std::lock_guard lock(mutex_);
  auto& state = blocks_.at(static_cast<std::size_t>(block.id));
  // Alone, or the first of the sharers to go past `slot`: the others read slots below it
  // only, so writing here in place changes nothing they see.
  if (state.refs == 1 || state.filled == slot) {
    state.filled = slot + 1;
    return block;
  }
  // Another sharer has written this slot: copy what this sequence holds of the block.
  const BlockRef copy = allocate_locked();
  copy_slots(block, copy, slot);
  blocks_[static_cast<std::size_t>(copy.id)].filled = slot + 1;
  release_locked(block.id);
  if (slot > 0) {
    ++stats_.blocks_copied;
    stats_.positions_copied += static_cast<std::uint64_t>(slot);
  }
  return copy;
}

KvSequence::KvSequence(KvSequence&& other) noexcept
    : pool_(std::move(other.pool_)), table_(std::move(other.table_)), length_(std::exchange(other.length_, 0)) {
  other.table_.clear();
}

KvSequence& KvSequence::operator=(KvSequence&& other) noexcept {
  if (this != &other) {
    drop();
    pool_ = std::move(other.pool_);
    table_ = std::move(other.table_);
    length_ = std::exchange(other.length_, 0);
    other.table_.clear();
  }
  return *this;
}

KvSequence::~KvSequence() { drop(); }

void KvSequence::drop() noexcept {
  if (!pool_) return;
  pool_->release(table_);
  pool_->add_sequences(-1);
  table_.clear();
  pool_.reset();
}

KvSequence KvSequence::fork() const {
  if (!pool_) return {};
  KvSequence child(pool_);
  child.table_ = table_;
  child.length_ = length_;
  pool_->share(table_, length_);
  return child;
}

void KvSequence::clear() {
  if (pool_) pool_->release(table_);
  table_.clear();
  length_ = 0;
}

std::int64_t KvSequence::bytes() const {
  return pool_ ? static_cast<std::int64_t>(table_.size()) * pool_->block_bytes() : 0;
}

void KvSequence::prepare(std::int64_t count) {
  if (!pool_) throw InternalError("a KV sequence that belongs to no pool was written");
  if (count < 0 || length_ + count > pool_->max_positions())
    throw InternalError("a KV sequence written beyond " + std::to_string(pool_->max_positions()) + " positions");
  constexpr std::int64_t B = KvPool::kBlockPositions;
  for (std::int64_t p = length_; p < length_ + count; ++p) {
    const auto index = static_cast<std::size_t>(p / B);
    if (index == table_.size()) table_.push_back(pool_->allocate());
    table_[index] = pool_->writable(table_[index], p % B);
  }
}

void KvSequence::commit(std::int64_t count) {
  if (length_ + count > static_cast<std::int64_t>(table_.size()) * KvPool::kBlockPositions)
    throw InternalError("KV positions committed that were not prepared");
  length_ += count;
}

float* KvSequence::row(int layer, int which, std::int64_t position) const {
  constexpr std::int64_t B = KvPool::kBlockPositions;
  const std::int64_t d = pool_->d();
  float* block = table_[static_cast<std::size_t>(position / B)].data;
  return block + ((std::int64_t{2} * layer + which) * B + position % B) * d;
}

std::span<float> KvSequence::keys(int layer, std::int64_t position) {
  return {row(layer, 0, position), static_cast<std::size_t>(pool_->d())};
}

std::span<float> KvSequence::values(int layer, std::int64_t position) {
  return {row(layer, 1, position), static_cast<std::size_t>(pool_->d())};
}

void KvSequence::check_held(std::int64_t positions) const {
  if (positions < 0 || positions > static_cast<std::int64_t>(table_.size()) * KvPool::kBlockPositions)
    throw InternalError("KV positions read that the sequence holds no block for");
}

void KvSequence::blocks(int layer, std::int64_t positions, std::vector<kernels::KvBlockView>& out) const {
  constexpr std::int64_t B = KvPool::kBlockPositions;
  check_held(positions);
  out.clear();
  for (std::int64_t first = 0; first < positions; first += B) {
    const auto rows = static_cast<std::size_t>(std::min(B, positions - first) * pool_->d());
    out.push_back({{row(layer, 0, first), rows}, {row(layer, 1, first), rows}});
  }
}

void KvSequence::gather(int layer, std::int64_t positions, std::span<float> keys, std::span<float> values) const {
  constexpr std::int64_t B = KvPool::kBlockPositions;
  check_held(positions);
  const std::int64_t d = pool_ ? pool_->d() : 0;
  const auto floats = static_cast<std::size_t>(positions * d);
  if (keys.size() < floats || values.size() < floats)
    throw InternalError("KV rows gathered into too small a buffer");
  for (std::int64_t first = 0; first < positions; first += B) {
    const auto n = static_cast<std::size_t>(std::min(B, positions - first) * d);
    std::memcpy(keys.data() + first * d, row(layer, 0, first), n * sizeof(float));
    std::memcpy(values.data() + first * d, row(layer, 1, first), n * sizeof(float));
  }
}

}  // namespace amanuensis::nn

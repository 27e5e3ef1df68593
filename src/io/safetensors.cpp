#include "soupkit/io/safetensors.hpp"

#include "soupkit/util/error.hpp"
#include "soupkit/util/json_input.hpp"
#include "soupkit/util/message_text.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>

namespace soupkit {
namespace {

using nlohmann::json;

// The format's own limit on header size; also keeps a corrupt length from
// making us allocate gigabytes.
constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

std::uint64_t read_le64(const std::byte* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<std::uint8_t>(p[i]);
  return v;
}

SafetensorsEntry parse_entry(const std::string& file, const std::string& name, const json& value,
                             std::uint64_t data_start, std::uint64_t buffer_size) {
  auto fail = [&](const std::string& what) {
    return InputError(fmt::format("{}: tensor '{}': {}", file, excerpt(name), what));
  };
  if (!value.is_object()) throw fail("header entry is not a JSON object");
  const auto dtype_it = value.find("dtype");
  const auto shape_it = value.find("shape");
  const auto offsets_it = value.find("data_offsets");
  if (dtype_it == value.end() || !dtype_it->is_string()) throw fail("missing or non-string \"dtype\"");
  if (shape_it == value.end() || !shape_it->is_array()) throw fail("missing or non-array \"shape\"");
  if (offsets_it == value.end() || !offsets_it->is_array() || offsets_it->size() != 2)
    throw fail("\"data_offsets\" must be an array [begin, end]");

  SafetensorsEntry entry;
  entry.info.name = name;
  const std::string& dtype_text = dtype_it->get_ref<const std::string&>();
  bool known = false;
  for (int t = 0; t <= static_cast<int>(DType::BOOL); ++t)
    if (dtype_name(static_cast<DType>(t)) == dtype_text) {
      entry.info.dtype = static_cast<DType>(t);
      known = true;
    }
  if (!known) throw fail(fmt::format("unknown dtype \"{}\"", excerpt(dtype_text)));
  for (const auto& d : *shape_it) {
    if (!d.is_number_unsigned()) throw fail(fmt::format("shape {} has a dimension that is not a non-negative integer",
                                                           json_excerpt(*shape_it)));
    entry.info.shape.push_back(d.get<std::uint64_t>());
  }
  for (const auto& o : *offsets_it)
    if (!o.is_number_unsigned()) throw fail("\"data_offsets\" must be non-negative integers");
  const auto begin = (*offsets_it)[0].get<std::uint64_t>();
  const auto end = (*offsets_it)[1].get<std::uint64_t>();
  if (begin > end) throw fail(fmt::format("data_offsets [{}, {}] end before they begin", begin, end));
  if (end > buffer_size)
    throw fail(fmt::format("data_offsets [{}, {}] run past the end of the data buffer ({} bytes; file truncated?)",
                           begin, end, buffer_size));
  const auto numel = checked_numel(entry.info.shape);
  std::uint64_t expected = 0;
  if (!numel || __builtin_mul_overflow(*numel, dtype_size(entry.info.dtype), &expected))
    throw fail(fmt::format("shape {} is too large", shape_string(entry.info.shape)));
  if (end - begin != expected)
    throw fail(fmt::format("data_offsets [{}, {}] hold {} bytes but shape {} x {} needs {}", begin, end, end - begin,
                           shape_string(entry.info.shape), dtype_text, expected));
  entry.file_offset = data_start + begin;
  return entry;
}

}  // namespace

SafetensorsHeader read_safetensors_header(const File& file) {
  const std::string name = file.path().string();
  const std::uint64_t file_size = file.size();
  SOUPKIT_INPUT_ERROR_IF(file_size < 8, "{}: file is truncated or not safetensors ({} bytes, less than the 8-byte header length)",
                         name, file_size);
  std::byte prefix[8];
  file.pread_exact(0, prefix);
  const std::uint64_t header_len = read_le64(prefix);
  SOUPKIT_INPUT_ERROR_IF(header_len > file_size - 8,
                         "{}: header length {} is larger than the file ({} bytes); file truncated or not safetensors",
                         name, header_len, file_size);
  SOUPKIT_INPUT_ERROR_IF(header_len > kMaxHeaderBytes, "{}: header length {} exceeds the format's 100 MB limit", name,
                         header_len);
  std::string text(header_len, '\0');
  file.pread_exact(8, std::as_writable_bytes(std::span(text)));

  // JSON parsers differ on a byte-order mark (nlohmann skips one, the
  // reference safetensors reader refuses it): refuse it too.
  SOUPKIT_INPUT_ERROR_IF(text.starts_with("\xEF\xBB\xBF"), "{}: header starts with a byte-order mark (not allowed)", name);
  const json header = parse_untrusted_json(text, name + ": header");
  SOUPKIT_INPUT_ERROR_IF(!header.is_object(), "{}: header is not a JSON object", name);

  const std::uint64_t data_start = 8 + header_len;
  const std::uint64_t buffer_size = file_size - data_start;
  SafetensorsHeader result;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      SOUPKIT_INPUT_ERROR_IF(!value.is_object(), "{}: __metadata__ is not a JSON object", name);
      for (const auto& [mk, mv] : value.items()) {
        SOUPKIT_INPUT_ERROR_IF(!mv.is_string(), "{}: __metadata__ value for '{}' is not a string", name,
                               excerpt(mk));
        result.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    result.entries.push_back(parse_entry(name, key, value, data_start, buffer_size));
  }

  // The buffer must be exactly tiled by the tensors: no overlap, no holes.
  std::sort(result.entries.begin(), result.entries.end(), [](const auto& a, const auto& b) {
    return a.file_offset != b.file_offset ? a.file_offset < b.file_offset : a.info.nbytes() < b.info.nbytes();
  });
  std::uint64_t cursor = data_start;
  const SafetensorsEntry* previous = nullptr;
  for (const auto& e : result.entries) {
    if (e.file_offset < cursor)
      throw InputError(fmt::format("{}: tensor '{}' overlaps tensor '{}' in the data buffer", name,
                                   excerpt(e.info.name), previous ? excerpt(previous->info.name) : "?"));
    if (e.file_offset > cursor)
      throw InputError(fmt::format("{}: {} unused bytes in the data buffer before tensor '{}' (the format forbids holes)",
                                   name, e.file_offset - cursor, excerpt(e.info.name)));
    cursor = e.file_offset + e.info.nbytes();
    previous = &e;
  }
  SOUPKIT_INPUT_ERROR_IF(cursor != file_size, "{}: {} bytes after the last tensor's data (the format forbids holes)", name,
                         file_size - cursor);
  return result;
}

SafetensorsLayout layout_safetensors(const std::vector<TensorInfo>& tensors, const StringMap& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<std::uint64_t> relative;
  std::uint64_t cursor = 0;
  for (const auto& t : tensors) {
    header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {cursor, cursor + t.nbytes()}}};
    relative.push_back(cursor);
    cursor += t.nbytes();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  SafetensorsLayout layout;
  layout.header.resize(8);
  std::uint64_t len = text.size();
  for (int i = 0; i < 8; ++i) layout.header[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  layout.header += text;
  for (auto r : relative) layout.offsets.push_back(layout.header.size() + r);
  layout.file_size = layout.header.size() + cursor;
  return layout;
}

}  // namespace soupkit

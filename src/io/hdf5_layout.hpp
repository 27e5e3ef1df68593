#pragma once
// Names in soupkit's HDF5 checkpoint layout (docs/formats.md).
namespace soupkit::h5layout {

inline constexpr const char* kFormatAttr = "soupkit_format";
inline constexpr const char* kFormatName = "soupkit-checkpoint";
inline constexpr const char* kFormatVersionAttr = "soupkit_format_version";
inline constexpr long long kFormatVersion = 1;
inline constexpr const char* kVersionAttr = "soupkit_version";
inline constexpr const char* kMetadataAttr = "safetensors_metadata";  // JSON object of strings
inline constexpr const char* kProvenanceAttr = "provenance";          // JSON object
inline constexpr const char* kTensorsGroup = "tensors";
inline constexpr const char* kFilesGroup = "files";
inline constexpr const char* kNameAttr = "name";
inline constexpr const char* kDTypeAttr = "dtype";

}  // namespace soupkit::h5layout

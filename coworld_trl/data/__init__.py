"""Offline datasets: on-disk TED storage, npz / hdf5 import and export, validation, sampling."""
from coworld_trl.data.dataset import DatasetError, DatasetMetadata, DatasetWriter, OfflineDataset, add_checksums
from coworld_trl.data.layout import incoming_to_ted, ted_to_incoming
from coworld_trl.data.npz import export_npz, import_npz, read_npz_episode
from coworld_trl.data.recorder import EpisodeRecorder

__all__ = ["DatasetError", "DatasetMetadata", "DatasetWriter", "EpisodeRecorder", "OfflineDataset", "add_checksums",
           "export_npz", "import_npz", "incoming_to_ted", "read_npz_episode", "ted_to_incoming"]

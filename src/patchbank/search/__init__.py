"""Nearest-neighbour search of patch features against the memory bank: the :class:`Search`
protocol, its registry (:data:`SEARCHES`), the exact torch search, the FAISS indexes, and the
leave-one-group-out view of any of them (:class:`LeaveGroupOut`, for calibration)."""
from patchbank.search.base import SEARCHES, Search, make_search, register_search, resolve_search
from patchbank.search.exact import ExactSearch
from patchbank.search.leave_out import LeaveGroupOut, largest_group
from patchbank.search.faiss import FaissSearch, ivf_nlist, ivf_train_ids, make_search_from_chunks, pq_subquantizers

__all__ = ["SEARCHES", "Search", "ExactSearch", "FaissSearch", "LeaveGroupOut", "largest_group", "make_search",
           "register_search", "resolve_search", "ivf_nlist", "ivf_train_ids", "make_search_from_chunks", "pq_subquantizers"]

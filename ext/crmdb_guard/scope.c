/*
 * crmdb_guard's statement cache: what a caller's scope is, computed once per statement.
 *
 * The row policies of crm.<table> and the field checks of crm_api.<table> ask the same
 * questions about the caller (their employee id, subordinates, projects, shares, org
 * units). In SQL each asks on its own: a policy's helper call is an InitPlan of that
 * policy, and the view joins a one-row subquery that calls the helpers again, then
 * carries its arrays along with every row (through a sort, too). This file lets them
 * share one answer per statement:
 *
 *   crmdb_guard.<helper>(args)   the crm_private helper of the same name and argument
 *                                types, called once per statement, role and arguments;
 *                                the policies call these (crmdb_guard_memo).
 *   crmdb_guard.scope_flag / scope_id / scope_ids / scope_has(view, slot[, x])
 *                                column <slot> of the one row of crm_private view
 *                                <view> (the caller's scope for a crm_api view), read
 *                                once per statement; scope_has tests membership by binary
 *                                search. The crm_api views call these per row.
 *
 * "Once per statement" must never mean "an answer from another statement": a cached
 * value is reused only while everything it may depend on is the same. That is the
 * session's transaction and subtransaction, the current and the session user, the
 * statement's start time, and the active snapshot's contents: xmin, xmax, the running
 * transactions and the command id. So a share committed by a colleague, a row the
 * transaction itself wrote, a rolled-back savepoint or a SET ROLE is seen by the next
 * statement. Values are computed with the caller's privileges (SPI and fmgr as the
 * current user), so the cache shows nobody anything they could not read.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#if PG_VERSION_NUM >= 170000
#define MY_LXID (MyProc->vxid.lxid)
#else
#define MY_LXID (MyProc->lxid)
#endif

PG_FUNCTION_INFO_V1(crmdb_guard_memo);
PG_FUNCTION_INFO_V1(crmdb_guard_scope_flag);
PG_FUNCTION_INFO_V1(crmdb_guard_scope_id);
PG_FUNCTION_INFO_V1(crmdb_guard_scope_ids);
PG_FUNCTION_INFO_V1(crmdb_guard_scope_has);

/* What a cached value may depend on; equal keys, same answer. */
typedef struct StatementKey
{
	LocalTransactionId lxid;
	SubTransactionId subxid;
	Oid			user;
	Oid			session_user;
	TimestampTz started;
	TransactionId xmin;
	TransactionId xmax;
	CommandId	curcid;
	uint32		xcnt;
	int32		subxcnt;
	bool		suboverflowed;
	bool		recovery;
	TransactionId *xip;			/* copies, in cache_cxt */
	TransactionId *subxip;
} StatementKey;

/* One crmdb_guard.<helper>(args) answer. */
typedef struct Memo
{
	Oid			fn;
	int			nargs;
	Datum		args[FUNC_MAX_ARGS];
	bool		argnull[FUNC_MAX_ARGS];
	Datum		value;
	bool		isnull;
} Memo;

/* One column of a scope view's row. */
typedef struct Slot
{
	Oid			type;			/* BOOLOID, INT8OID or INT8ARRAYOID */
	bool		isnull;
	Datum		value;			/* bool, int8, or the array (a copy) */
	int64	   *ids;			/* INT8ARRAYOID: sorted, without NULLs */
	int			nids;
	bool		nulls;			/* the array held a NULL */
} Slot;

typedef struct ScopeRow
{
	Oid			view;
	int			nslots;
	Slot	   *slots;			/* [1..nslots] */
} ScopeRow;

/* The fmgr details of a memoized helper, kept in the caller's FmgrInfo. */
typedef struct Target
{
	Oid			fn;
	FmgrInfo	flinfo;
	int16		typlen;
	bool		typbyval;
	int16		arglen[FUNC_MAX_ARGS];
	bool		argbyval[FUNC_MAX_ARGS];
} Target;

/* A scope view's saved plan, kept for the session (re-planned by PostgreSQL on DDL). */
typedef struct ScopePlan
{
	Oid			view;
	SPIPlanPtr	plan;
} ScopePlan;

static MemoryContext cache_cxt = NULL;	/* the statement's values; reset per statement */
static bool cache_valid = false;
static uint64 generation = 0;	/* counts resets: a value is kept only for its own */
static StatementKey cached;
static List *memos = NIL;
static List *rows = NIL;
static List *plans = NIL;		/* in TopMemoryContext */

/* Fills `key` from the session and the active snapshot (arrays not copied). */
static void
current_key(StatementKey *key)
{
	Snapshot	snap = GetActiveSnapshot();

	memset(key, 0, sizeof(*key));
	key->lxid = MY_LXID;
	key->subxid = GetCurrentSubTransactionId();
	key->user = GetUserId();
	key->session_user = GetSessionUserId();
	key->started = GetCurrentStatementStartTimestamp();
	key->xmin = snap->xmin;
	key->xmax = snap->xmax;
	key->curcid = snap->curcid;
	key->xcnt = snap->xcnt;
	key->subxcnt = snap->subxcnt;
	key->suboverflowed = snap->suboverflowed;
	key->recovery = snap->takenDuringRecovery;
	key->xip = snap->xip;
	key->subxip = snap->subxip;
}

static bool
same_key(const StatementKey *a, const StatementKey *b)
{
	return a->lxid == b->lxid && a->subxid == b->subxid && a->user == b->user &&
		a->session_user == b->session_user && a->started == b->started &&
		a->xmin == b->xmin && a->xmax == b->xmax && a->curcid == b->curcid &&
		a->xcnt == b->xcnt && a->subxcnt == b->subxcnt &&
		a->suboverflowed == b->suboverflowed && a->recovery == b->recovery &&
		(a->xcnt == 0 || memcmp(a->xip, b->xip, a->xcnt * sizeof(TransactionId)) == 0) &&
		(a->subxcnt <= 0 ||
		 memcmp(a->subxip, b->subxip, a->subxcnt * sizeof(TransactionId)) == 0);
}

/*
 * Makes the cache the current statement's: keeps it when the key is the same, else
 * empties it. False when there is no active MVCC snapshot (nothing may be cached).
 */
static bool
statement_cache(void)
{
	StatementKey key;

	/* An MVCC snapshot's contents say what it sees; nothing else is cached */
	if (!ActiveSnapshotSet() || GetActiveSnapshot()->snapshot_type != SNAPSHOT_MVCC)
		return false;
	current_key(&key);
	if (cache_valid && same_key(&key, &cached))
		return true;
	if (cache_cxt == NULL)
		cache_cxt = AllocSetContextCreate(TopMemoryContext, "crmdb_guard statement cache",
										  ALLOCSET_SMALL_SIZES);
	cache_valid = false;
	generation++;
	MemoryContextReset(cache_cxt);
	memos = NIL;
	rows = NIL;
	cached = key;
	cached.xip = MemoryContextAlloc(cache_cxt, Max(key.xcnt, 1) * sizeof(TransactionId));
	cached.subxip = MemoryContextAlloc(cache_cxt,
									   Max(key.subxcnt, 1) * sizeof(TransactionId));
	if (key.xcnt > 0)
		memcpy(cached.xip, key.xip, key.xcnt * sizeof(TransactionId));
	if (key.subxcnt > 0)
		memcpy(cached.subxip, key.subxip, key.subxcnt * sizeof(TransactionId));
	cache_valid = true;
	return true;
}

/* The crm_private function crmdb_guard.<name>(types) stands for, with its fmgr details. */
static Target *
memo_target(FunctionCallInfo fcinfo)
{
	Oid			self = fcinfo->flinfo->fn_oid;
	HeapTuple	tup;
	Form_pg_proc me;
	Oid			target;
	Oid			private_ns = get_namespace_oid("crm_private", false);
	Target	   *t;
	oidvector  *argtypes;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(self));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "crmdb_guard: function %u not found", self);
	me = (Form_pg_proc) GETSTRUCT(tup);
	argtypes = buildoidvector(me->proargtypes.values, me->pronargs);
	target = GetSysCacheOid3(PROCNAMEARGSNSP, Anum_pg_proc_oid,
							 CStringGetDatum(NameStr(me->proname)),
							 PointerGetDatum(argtypes), ObjectIdGetDatum(private_ns));
	if (!OidIsValid(target) || get_func_rettype(target) != me->prorettype ||
		get_func_retset(target) || me->proretset)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("crmdb_guard: %s has no crm_private function of the same name, "
						"arguments and result to stand for",
						format_procedure(self))));
	t = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(Target));
	t->fn = target;
	fmgr_info_cxt(target, &t->flinfo, fcinfo->flinfo->fn_mcxt);
	get_typlenbyval(me->prorettype, &t->typlen, &t->typbyval);
	for (int i = 0; i < me->pronargs; i++)
		get_typlenbyval(me->proargtypes.values[i], &t->arglen[i], &t->argbyval[i]);
	ReleaseSysCache(tup);
	return t;
}

static bool
may_execute(Oid fn)
{
#if PG_VERSION_NUM >= 160000
	return object_aclcheck(ProcedureRelationId, fn, GetUserId(), ACL_EXECUTE) == ACLCHECK_OK;
#else
	return pg_proc_aclcheck(fn, GetUserId(), ACL_EXECUTE) == ACLCHECK_OK;
#endif
}

/*
 * crmdb_guard.<helper>(args): crm_private.<helper>(args), called once per statement
 * for the same role and arguments.
 */
Datum
crmdb_guard_memo(PG_FUNCTION_ARGS)
{
	Target	   *t = (Target *) fcinfo->flinfo->fn_extra;
	int			nargs = PG_NARGS();
	bool		cacheable;
	uint64		gen;
	ListCell   *lc;
	LOCAL_FCINFO(call, FUNC_MAX_ARGS);
	Datum		value;

	if (t == NULL)
		fcinfo->flinfo->fn_extra = t = memo_target(fcinfo);
	cacheable = statement_cache();
	gen = generation;
	if (cacheable)
	{
		foreach(lc, memos)
		{
			Memo	   *m = lfirst(lc);
			bool		same = m->fn == t->fn && m->nargs == nargs;

			for (int i = 0; same && i < nargs; i++)
				same = m->argnull[i] == PG_ARGISNULL(i) &&
					(m->argnull[i] || datumIsEqual(m->args[i], PG_GETARG_DATUM(i),
												   t->argbyval[i], t->arglen[i]));
			if (!same)
				continue;
			if (m->isnull)
				PG_RETURN_NULL();
			return t->typbyval ? m->value : datumCopy(m->value, false, t->typlen);
		}
	}
	/* Called through fmgr, which checks no privilege: the caller's, as in SQL */
	if (!may_execute(t->fn))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function %s", format_procedure(t->fn))));
	InitFunctionCallInfoData(*call, &t->flinfo, nargs, fcinfo->fncollation, NULL, NULL);
	for (int i = 0; i < nargs; i++)
	{
		call->args[i].value = PG_GETARG_DATUM(i);
		call->args[i].isnull = PG_ARGISNULL(i);
	}
	value = FunctionCallInvoke(call);
	/* The helper ran SQL: keep its answer only if the cache is still this statement's */
	if (cacheable && statement_cache() && generation == gen)
	{
		MemoryContext old = MemoryContextSwitchTo(cache_cxt);
		Memo	   *m = palloc0(sizeof(Memo));

		m->fn = t->fn;
		m->nargs = nargs;
		for (int i = 0; i < nargs; i++)
		{
			m->argnull[i] = PG_ARGISNULL(i);
			if (!m->argnull[i])
				m->args[i] = datumCopy(PG_GETARG_DATUM(i), t->argbyval[i], t->arglen[i]);
		}
		m->isnull = call->isnull;
		if (!call->isnull)
			m->value = datumCopy(value, t->typbyval, t->typlen);
		memos = lappend(memos, m);
		MemoryContextSwitchTo(old);
	}
	if (call->isnull)
		PG_RETURN_NULL();
	return value;
}

static int
compare_ids(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/* The saved plan of SELECT * FROM <view>, which must be a view in crm_private. */
static SPIPlanPtr
scope_plan(Oid view)
{
	ListCell   *lc;
	char	   *name;
	char	   *sql;
	SPIPlanPtr	plan;
	ScopePlan  *sp;
	MemoryContext old;

	foreach(lc, plans)
	{
		sp = lfirst(lc);
		if (sp->view == view)
			return sp->plan;
	}
	name = get_rel_name(view);
	/* crm_private.api_<table>_scope, the views crmdb policy apply makes: nothing else */
	if (name == NULL || get_rel_relkind(view) != RELKIND_VIEW ||
		get_rel_namespace(view) != get_namespace_oid("crm_private", false) ||
		strncmp(name, "api_", 4) != 0 || strlen(name) < 10 ||
		strcmp(name + strlen(name) - 6, "_scope") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("crmdb_guard: relation %u is not a scope view of crm_private", view)));
	sql = psprintf("SELECT * FROM %s", quote_qualified_identifier("crm_private", name));
	plan = SPI_prepare(sql, 0, NULL);
	if (plan == NULL)
		elog(ERROR, "crmdb_guard: SPI_prepare of \"%s\" failed: %s", sql,
			 SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "crmdb_guard: SPI_keepplan failed");
	old = MemoryContextSwitchTo(TopMemoryContext);
	sp = palloc(sizeof(ScopePlan));
	sp->view = view;
	sp->plan = plan;
	plans = lappend(plans, sp);
	MemoryContextSwitchTo(old);
	return plan;
}

/* Reads the one row of scope view `view` with the caller's privileges. */
static ScopeRow *
read_scope(Oid view)
{
	ScopeRow   *row;
	TupleDesc	desc;
	HeapTuple	tuple;
	MemoryContext old;
	int			rc;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "crmdb_guard: SPI_connect failed");
	/* read_only: the statement's own snapshot, as the helpers see it */
	rc = SPI_execute_plan(scope_plan(view), NULL, NULL, true, 2);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_CARDINALITY_VIOLATION),
				 errmsg("crmdb_guard: scope view %s gave %llu rows, not one",
						get_rel_name(view), (unsigned long long) SPI_processed)));
	desc = SPI_tuptable->tupdesc;
	tuple = SPI_tuptable->vals[0];
	old = MemoryContextSwitchTo(cache_cxt);
	row = palloc0(sizeof(ScopeRow));
	row->view = view;
	row->nslots = desc->natts;
	row->slots = palloc0(sizeof(Slot) * (desc->natts + 1));
	for (int a = 1; a <= desc->natts; a++)
	{
		Slot	   *s = &row->slots[a];
		bool		isnull;
		Datum		d = SPI_getbinval(tuple, desc, a, &isnull);

		s->type = SPI_gettypeid(desc, a);
		s->isnull = isnull;
		if (s->type != BOOLOID && s->type != INT8OID && s->type != INT8ARRAYOID)
			elog(ERROR, "crmdb_guard: column %d of scope view %s is of type %s", a,
				 get_rel_name(view), format_type_be(s->type));
		if (isnull)
			continue;
		if (s->type == INT8ARRAYOID)
		{
			ArrayType  *arr = DatumGetArrayTypePCopy(d);
			Datum	   *elems;
			bool	   *nulls;
			int			n;

			deconstruct_array(arr, INT8OID, sizeof(int64), true, TYPALIGN_DOUBLE,
							  &elems, &nulls, &n);
			s->value = PointerGetDatum(arr);
			s->ids = palloc(sizeof(int64) * Max(n, 1));
			for (int i = 0; i < n; i++)
			{
				if (nulls[i])
					s->nulls = true;
				else
					s->ids[s->nids++] = DatumGetInt64(elems[i]);
			}
			qsort(s->ids, s->nids, sizeof(int64), compare_ids);
		}
		else
			s->value = d;		/* bool and int8 are by value */
	}
	MemoryContextSwitchTo(old);
	SPI_finish();
	return row;
}

/* Column `slot` of the caller's row of scope view `view`, for this statement. */
static Slot *
scope_slot(Oid view, int32 slot, Oid type)
{
	ListCell   *lc;
	ScopeRow   *row = NULL;

	if (!statement_cache())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("crmdb_guard: scope views are read within a statement")));
	foreach(lc, rows)
	{
		ScopeRow   *r = lfirst(lc);

		if (r->view == view)
		{
			row = r;
			break;
		}
	}
	if (row == NULL)
	{
		uint64		gen = generation;

		row = read_scope(view);
		/* Reading ran SQL: the row is in the cache only if that is still this statement's */
		if (!statement_cache() || generation != gen)
			elog(ERROR, "crmdb_guard: the statement changed while its scope was read");
		{
			MemoryContext old = MemoryContextSwitchTo(cache_cxt);

			rows = lappend(rows, row);
			MemoryContextSwitchTo(old);
		}
	}
	if (slot < 1 || slot > row->nslots || row->slots[slot].type != type)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("crmdb_guard: scope view %s has no column %d of type %s",
						get_rel_name(view), slot, format_type_be(type))));
	return &row->slots[slot];
}

static Slot *
scope_arg(FunctionCallInfo fcinfo, Oid type)
{
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("crmdb_guard: a scope view and column are required")));
	return scope_slot(PG_GETARG_OID(0), PG_GETARG_INT32(1), type);
}

/* A scalar column of the caller's scope row (bool and int8 are passed by value). */
static Datum
scope_value(FunctionCallInfo fcinfo, Oid type)
{
	Slot	   *s = scope_arg(fcinfo, type);

	if (s->isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(s->value);
}

/* crmdb_guard.scope_flag(view, slot): a boolean column of the caller's scope row. */
Datum
crmdb_guard_scope_flag(PG_FUNCTION_ARGS)
{
	return scope_value(fcinfo, BOOLOID);
}

/* crmdb_guard.scope_id(view, slot): a bigint column of the caller's scope row. */
Datum
crmdb_guard_scope_id(PG_FUNCTION_ARGS)
{
	return scope_value(fcinfo, INT8OID);
}

/* crmdb_guard.scope_ids(view, slot): a bigint[] column of the caller's scope row. */
Datum
crmdb_guard_scope_ids(PG_FUNCTION_ARGS)
{
	Slot	   *s = scope_arg(fcinfo, INT8ARRAYOID);

	if (s->isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(datumCopy(s->value, false, -1));
}

/*
 * crmdb_guard.scope_has(view, slot, x): x = ANY (column slot), by binary search; the
 * same three-valued answer (NULL for a NULL x or array, or no match in an array with
 * a NULL).
 */
Datum
crmdb_guard_scope_has(PG_FUNCTION_ARGS)
{
	Slot	   *s = scope_arg(fcinfo, INT8ARRAYOID);
	int64		x;
	int			lo = 0;
	int			hi = s->nids - 1;

	if (s->isnull)
		PG_RETURN_NULL();
	if (s->nids == 0 && !s->nulls)
		PG_RETURN_BOOL(false);	/* as x = ANY ('{}'), even for a NULL x */
	if (PG_ARGISNULL(2))
		PG_RETURN_NULL();
	x = PG_GETARG_INT64(2);
	while (lo <= hi)
	{
		int			mid = lo + (hi - lo) / 2;

		if (s->ids[mid] == x)
			PG_RETURN_BOOL(true);
		if (s->ids[mid] < x)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	if (s->nulls)
		PG_RETURN_NULL();
	PG_RETURN_BOOL(false);
}

/*
 * crmdb_guard: refuses EXPLAIN to crmdb's employees.
 *
 * Row-level security hides rows, but EXPLAIN shows how a query ran: PostgreSQL may
 * evaluate a leakproof condition of the query (id = 5, name < 'M') before the row
 * policies, and EXPLAIN ANALYZE then shows whether the policies' sub-plans ran, which
 * lets an employee with a SQL login learn any field of any row by bisection; plain
 * EXPLAIN shows row estimates drawn from statistics over hidden rows. Neither can be
 * closed in SQL, so this library refuses EXPLAIN (any form: ANALYZE or not, EXPLAIN
 * EXECUTE, inside a function) when the current role has the privileges of
 * crmdb_employee, i.e. is an employee (directly, or after SET ROLE through a gateway).
 * DBAs, the owner, the worker's login (which holds employee roles NOINHERIT) and a
 * superuser's session after SET ROLE keep it.
 *
 * The library also holds crmdb's statement cache (scope.c): SQL functions that compute a
 * caller's scope once per statement for the row policies and crm_api views.
 *
 * Load it for every session (no restart needed):
 *   ALTER SYSTEM SET session_preload_libraries = 'crmdb_guard'; SELECT pg_reload_conf();
 * `crmdb lint` reports a database whose sessions do not load it.
 */
#include "postgres.h"

#include "commands/explain.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static ProcessUtility_hook_type prev_utility = NULL;
static char *guard_version = NULL;

/* Whether the current role is one of crmdb's employees (has crmdb_employee's rights). */
static bool
current_role_is_employee(void)
{
	Oid			employee = get_role_oid("crmdb_employee", true);
	Oid			current = GetUserId();

	/*
	 * A superuser's session may read everything anyway: its DBA may EXPLAIN after SET
	 * ROLE to an employee (to see the employee's plan). A gateway may not.
	 */
	if (!OidIsValid(employee) || superuser_arg(current) || superuser_arg(GetSessionUserId()))
		return false;
	return has_privs_of_role(current, employee);
}

static void
guard_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
			  ProcessUtilityContext context, ParamListInfo params,
			  QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	if (IsA(pstmt->utilityStmt, ExplainStmt) && current_role_is_employee())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("EXPLAIN is not available to crmdb employees"),
				 errdetail("A plan and its counts reveal rows that row-level security hides."),
				 errhint("Ask a DBA to EXPLAIN the query.")));
	if (prev_utility)
		prev_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
}

void
_PG_init(void)
{
	/* Read-only marker: `SHOW crmdb_guard.version` tells the session loaded it. */
	DefineCustomStringVariable("crmdb_guard.version",
							   "crmdb_guard is loaded in this session (its version).",
							   NULL, &guard_version, "2", PGC_INTERNAL, 0,
							   NULL, NULL, NULL);
	MarkGUCPrefixReserved("crmdb_guard");
	prev_utility = ProcessUtility_hook;
	ProcessUtility_hook = guard_utility;
}

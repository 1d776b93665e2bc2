// `stackpass:decide`: asks the broker what its policy would decide for the
// task's user, stack and providers (`POST /v1/decisions`, a dry run that mints
// nothing), and fails the task before any real work when the answer is not
// "allow", with the policy's reasons in the task log.

import { createTemplateAction } from '@backstage/plugin-scaffolder-node';
import { StackpassClient, ruleLines, type Decision } from '../client';
import { StackpassError } from '../errors';
import { initiatorUserToken } from '../token';
import { SUPPORTED_PROVIDERS } from '../env';

export interface ActionOptions {
  /** The broker's base URL (app-config `stackpass.baseUrl`). */
  baseUrl: string;
}

/** Why a decision is not "allow", in lines for the task log; empty when allowed. */
export function refusalLines(
  stack: string,
  provider: string,
  decision: Decision,
): string[] {
  switch (decision.decision) {
    case 'allow':
      return [];
    case 'needs_approval':
      return [
        `stackpass needs approval before issuing ${provider} credentials for ${stack} (rule ${decision.grant.rule}: ${decision.approval.count} approval(s) from ${decision.approval.approvers.join(', ') || 'the rule\'s approvers'})`,
        `hint: ask for it with \`stackpass approvals request --stack ${stack} --provider ${provider}\`; once it is approved, a template whose stackpass:decide step sets allowApproval: true can go on`,
      ];
    case 'deny':
      return [
        `stackpass would deny ${provider} credentials for ${stack}: ${decision.summary}`,
        ...ruleLines(decision.rules),
      ];
    default:
      return [
        `stackpass answered with a decision this module does not know: ${JSON.stringify((decision as { decision?: unknown }).decision)}`,
      ];
  }
}

export function createStackpassDecideAction(options: ActionOptions) {
  const client = new StackpassClient(options.baseUrl);
  return createTemplateAction({
    id: 'stackpass:decide',
    description:
      "Asks stackpass whether the task's user may get credentials for a stack (a dry run); fails the task with the policy's reasons if not.",
    schema: {
      input: {
        stack: z =>
          z.string().min(1).describe('Stack reference, e.g. pulumi:acme/payments/dev'),
        providers: z =>
          z
            .array(z.enum(SUPPORTED_PROVIDERS))
            .min(1)
            .default(['aws'])
            .describe('Cloud providers the task needs credentials for'),
        durationSeconds: z =>
          z.number().int().positive().optional().describe('Requested credential lifetime'),
        reason: z => z.string().max(500).optional().describe('Why, for the audit log'),
        allowApproval: z =>
          z
            .boolean()
            .default(false)
            .describe(
              'Let "needs approval" pass: the dry run cannot see approvals, so a rule that needs one always answers so; stackpass:run then uses the user\'s approved request, or fails if there is none',
            ),
      },
      output: {
        decisions: z =>
          z
            .array(
              z.object({
                provider: z.string(),
                decision: z.string(),
                rule: z.string().optional(),
                role: z.string().optional(),
              }),
            )
            .describe('What the policy decided, per provider (no secrets)'),
      },
    },
    async handler(ctx) {
      const token = initiatorUserToken(ctx.secrets);
      const { stack, reason } = ctx.input;
      const providers = ctx.input.providers ?? ['aws'];
      const summary: { provider: string; decision: string; rule?: string; role?: string }[] = [];
      const refusals: string[] = [];
      for (const provider of providers) {
        const decision = await client.decide(
          token,
          {
            stack,
            provider,
            ...(ctx.input.durationSeconds !== undefined
              ? { duration_seconds: ctx.input.durationSeconds }
              : {}),
            ...(reason ? { reason } : {}),
          },
          ctx.signal,
        );
        const lines = refusalLines(stack, provider, decision);
        if (decision.decision === 'needs_approval' && ctx.input.allowApproval) {
          ctx.logger.info(
            `stackpass needs an approved request for ${provider} credentials for ${stack} (rule ${decision.grant.rule}); stackpass:run will use the user's approved request, or fail if there is none`,
          );
          summary.push({ provider, decision: 'needs_approval', rule: decision.grant.rule, role: decision.grant.role });
        } else if (decision.decision === 'allow') {
          ctx.logger.info(
            `stackpass would allow ${provider} credentials for ${stack}: rule ${decision.rule}, role ${decision.role}, ${decision.duration}`,
          );
          summary.push({ provider, decision: 'allow', rule: decision.rule, role: decision.role });
        } else {
          for (const line of lines) ctx.logger.error(line);
          refusals.push(...lines);
          summary.push({ provider, decision: decision.decision });
        }
      }
      ctx.output('decisions', summary);
      if (refusals.length > 0) {
        throw new StackpassError(refusals.join('\n'));
      }
    },
  });
}

param([string] $GuestUser, [string] $GuestPassword, [string] $JoinUser, [string] $JoinPassword)
# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}

$ImagingAction = 'run_guest_command'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    if ([string]::IsNullOrEmpty($GuestUser) -or $null -eq $GuestPassword) {
        throw 'no guest credential was passed: set IMAGING_GUEST_USER and IMAGING_GUEST_PASSWORD'
    }
    $GuestSecret = ConvertTo-SecureString -String $GuestPassword -AsPlainText -Force
    $GuestCredential = New-Object System.Management.Automation.PSCredential -ArgumentList $GuestUser, $GuestSecret
    # Inside the guest, over PowerShell Direct: runs one program (a post-boot migration step such as a
    # database schema upgrade) unless its completion marker is already on the Var volume, then writes the
    # marker. Arguments are passed as an array, never through a command line the guest re-parses.
    $Vm = 'NDXZOOM'
    $Command = @('C:\Instrument\Apps\MySQL\bin\mysql.exe', '--defaults-extra-file=C:\Instrument\Var\mysql\client.cnf', '--execute=ALTER TABLE runs ADD COLUMN IF NOT EXISTS proposal VARCHAR(16); -- it''s $(not run)')
    $Marker = 'imaging/migrations/m0004_database_schema_v2.json'
    $Record = [ordered]@{'migration' = 'm0004_database_schema_v2'; 'op_id' = '1a2b3c4d5e6f'}
    $VarRoot = 'C:\Instrument\Var'
    $text = ConvertTo-Json -InputObject $Record -Depth 8
    $answer = Invoke-Command -VMName $Vm -Credential $GuestCredential -ErrorAction Stop -ArgumentList $Command, $Marker, $VarRoot, $text -ScriptBlock {
        param([string[]] $Argv, [string] $MarkerRel, [string] $Root, [string] $Text)
        Set-StrictMode -Version 3
        $ErrorActionPreference = 'Stop'
        $done = Join-Path -Path $Root -ChildPath $MarkerRel.Replace('/', '\')
        if (Test-Path -LiteralPath $done -PathType Leaf) { return 'already done' }
        $program = $Argv[0]
        if (-not (Test-Path -LiteralPath $program -PathType Leaf)) { throw "$program is not installed in the guest" }
        $arguments = @()
        if ($Argv.Count -gt 1) { $arguments = $Argv[1..($Argv.Count - 1)] }
        & $program @arguments
        if ($LASTEXITCODE -ne 0) { throw "$program exited with code $LASTEXITCODE" }
        $folder = Split-Path -Path $done -Parent
        if (-not (Test-Path -LiteralPath $folder -PathType Container)) { New-Item -ItemType Directory -Path $folder -Force | Out-Null }
        [System.IO.File]::WriteAllText($done, $Text, (New-Object System.Text.UTF8Encoding -ArgumentList $false))
        'ran'
    }
    $Result['changed'] = ([string]$answer -eq 'ran')
    $Result['exit_code'] = 0
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}

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

$ImagingAction = 'restore_record'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    if ([string]::IsNullOrEmpty($GuestUser) -or $null -eq $GuestPassword) {
        throw 'no guest credential was passed: set IMAGING_GUEST_USER and IMAGING_GUEST_PASSWORD'
    }
    $GuestSecret = ConvertTo-SecureString -String $GuestPassword -AsPlainText -Force
    $GuestCredential = New-Object System.Management.Automation.PSCredential -ArgumentList $GuestUser, $GuestSecret
    # Inside the guest, over PowerShell Direct: the undo of write_record. Puts back the record that this
    # operation replaced (kept as record.previous.json with the operation's id; a null previous means there
    # was none, so the record is removed), atomically. A kept copy of another operation, or none, means this
    # operation never replaced the record: nothing to undo.
    $Vm = 'NDXZOOM'
    $Operation = '3f2a9c1d7e6b'
    $RecordPath = 'C:\Instrument\Var\imaging\record.json'
    $answer = Invoke-Command -VMName $Vm -Credential $GuestCredential -ErrorAction Stop -ArgumentList $RecordPath, $Operation -ScriptBlock {
        param([string] $Path, [string] $Operation)
        Set-StrictMode -Version 3
        $ErrorActionPreference = 'Stop'
        $previous = Join-Path -Path (Split-Path -Path $Path -Parent) -ChildPath 'record.previous.json'
        $kept = $null
        if (Test-Path -LiteralPath $previous -PathType Leaf) {
            try { $kept = ConvertFrom-Json -InputObject ([System.IO.File]::ReadAllText($previous)) } catch { $kept = $null }
        }
        if ($null -eq $kept -or -not ($kept.PSObject.Properties.Name -contains 'operation') -or [string]$kept.operation -cne $Operation) { 'unchanged' }
        else {
            if ($null -eq $kept.previous) {
                if (Test-Path -LiteralPath $Path -PathType Leaf) { Remove-Item -LiteralPath $Path -Force }
            } else {
                $partial = $Path + '.partial'
                [System.IO.File]::WriteAllText($partial, [string]$kept.previous, (New-Object System.Text.UTF8Encoding -ArgumentList $false))
                Move-Item -LiteralPath $partial -Destination $Path -Force
            }
            Remove-Item -LiteralPath $previous -Force
            'restored'
        }
    }
    $Result['changed'] = ([string]$answer -eq 'restored')
    $Result['record_path'] = $RecordPath
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
